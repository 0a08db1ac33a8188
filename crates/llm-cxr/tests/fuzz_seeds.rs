//! The fuzzers' seed corpora (`fuzz/`, run by `scripts/fuzz.sh`): small valid files of every
//! kind each target reads, so that fuzzing starts from inputs that reach deep into the parsers.
//! DICOM seeds of every transfer syntax come from cxr-image's tests (`dicom_variants.rs`), the
//! pickle seeds are the classifier's committed PyTorch fixtures.

use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Writes `<LLM_CXR_FUZZ_SEEDS>/<target>/<name>`; run by `scripts/fuzz.sh`.
#[test]
#[ignore = "a tool, not a check: scripts/fuzz.sh runs it with LLM_CXR_FUZZ_SEEDS set"]
fn write_fuzz_seeds() -> Result<()> {
    let corpus = PathBuf::from(
        std::env::var_os("LLM_CXR_FUZZ_SEEDS")
            .ok_or("set LLM_CXR_FUZZ_SEEDS to the corpus folder")?,
    );
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    images(&corpus.join("image"), &repo)?;
    gguf(&corpus.join("gguf"))?;
    safetensors(&corpus.join("safetensors"))?;
    let fixtures = repo.join("crates/cxr-classifier/tests/fixtures");
    for name in [
        "densenet_small_state_dict.pt",
        "densenet_small_lightning.ckpt",
    ] {
        put(
            &corpus.join("pickle"),
            name,
            &std::fs::read(fixtures.join(name))?,
        )?;
    }
    npy(&corpus.join("npy"))?;
    datasets(&corpus.join("dataset"))?;
    multipart(&corpus.join("multipart"))?;
    Ok(())
}

fn put(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join(name), bytes)?;
    Ok(())
}

/// A 32 x 24 gradient with a bright disc, as 8- and 16-bit PNG, JPEG and a DICOM.
fn images(dir: &Path, repo: &Path) -> Result<()> {
    let (w, h) = (32u32, 24u32);
    let pixels = (0..w * h)
        .map(|i| {
            let (x, y) = ((i % w) as f32, (i / w) as f32);
            let disc = ((x - 20.0).powi(2) + (y - 10.0).powi(2) < 25.0) as u8 as f32;
            (x / w as f32 * 0.7 + disc * 0.3).min(1.0)
        })
        .collect();
    let img = cxr_image::GrayImage::new(w, h, pixels).ok_or("image size")?;
    let encode = |f: image::ImageFormat, dynamic: image::DynamicImage| -> Result<Vec<u8>> {
        let mut out = std::io::Cursor::new(Vec::new());
        dynamic.write_to(&mut out, f)?;
        Ok(out.into_inner())
    };
    let luma8 = image::DynamicImage::ImageLuma8(img.to_luma8());
    put(
        dir,
        "gray8.png",
        &encode(image::ImageFormat::Png, luma8.clone())?,
    )?;
    put(
        dir,
        "gray8.jpg",
        &encode(image::ImageFormat::Jpeg, luma8.clone())?,
    )?;
    put(
        dir,
        "rgb.png",
        &encode(image::ImageFormat::Png, luma8.to_rgb8().into())?,
    )?;
    let luma16 = image::DynamicImage::ImageLuma16(img.to_luma16());
    put(dir, "gray16.png", &encode(image::ImageFormat::Png, luma16)?)?;
    let dcm = repo.join("crates/cxr-image/tests/fixtures/native_8bit.dcm");
    put(dir, "native_8bit.dcm", &std::fs::read(dcm)?)?;
    Ok(())
}

/// A llama GGUF with the metadata `read_gguf` needs, a three-token tokenizer and a 4 x 8 f32
/// embedding table (one in f16 beside it).
fn gguf(dir: &Path) -> Result<()> {
    let md = [
        ("general.architecture", Value::String("llama".into())),
        ("general.alignment", Value::U32(32)),
        ("llama.embedding_length", Value::U32(8)),
        ("llama.attention.head_count", Value::U32(2)),
        ("llama.attention.head_count_kv", Value::U32(1)),
        ("llama.block_count", Value::U32(1)),
        ("llama.feed_forward_length", Value::U32(16)),
        ("llama.context_length", Value::U32(64)),
        ("llama.rope.freq_base", Value::F32(10000.0)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
        (
            "tokenizer.ggml.tokens",
            Value::Array(
                ["a", "b", "ab", "<|endoftext|>"]
                    .map(|t| Value::String(t.into()))
                    .to_vec(),
            ),
        ),
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        (
            "tokenizer.ggml.merges",
            Value::Array(vec![Value::String("a b".into())]),
        ),
        ("tokenizer.ggml.eos_token_id", Value::U32(3)),
    ];
    let table = Tensor::arange(0f32, 32.0, &Device::Cpu)?.reshape((4, 8))?;
    let f32_table = QTensor::quantize(&table, GgmlDType::F32)?;
    let f16_norm = QTensor::quantize(&Tensor::ones(8, DType::F32, &Device::Cpu)?, GgmlDType::F16)?;
    let md: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (*k, v)).collect();
    std::fs::create_dir_all(dir)?;
    let mut f = std::fs::File::create(dir.join("tiny.gguf"))?;
    gguf_file::write(
        &mut f,
        &md,
        &[
            ("token_embd.weight", &f32_table),
            ("output_norm.weight", &f16_norm),
        ],
    )?;
    Ok(())
}

/// Two files: f32 and f16 tensors, and a bf16 one beside an i64 one.
fn safetensors(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let dev = Device::Cpu;
    let a = Tensor::arange(0f32, 12.0, &dev)?.reshape((3, 4))?;
    let b = Tensor::ones((2, 2), DType::F16, &dev)?;
    candle_core::safetensors::save(
        &[("a.weight", a.clone()), ("b.bias", b)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        dir.join("f32_f16.safetensors"),
    )?;
    let c = a.to_dtype(DType::BF16)?;
    let d = Tensor::new(&[1i64, 2, 3], &dev)?;
    candle_core::safetensors::save(
        &[("c", c), ("d", d)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        dir.join("bf16_i64.safetensors"),
    )?;
    Ok(())
}

/// 8 x 8 and 16 x 16 grids as `<u2`, and one `<i8` file as NumPy writes torch indices.
fn npy(dir: &Path) -> Result<()> {
    for side in [8usize, 16] {
        let codes: Vec<u16> = (0..side * side).map(|i| (i * 7 % 1024) as u16).collect();
        put(
            dir,
            &format!("u2_{side}.npy"),
            &cxr_vqgan::tokens::to_npy(&codes, side),
        )?;
    }
    let mut header = "{'descr': '<i8', 'fortran_order': False, 'shape': (2, 2), }".to_string();
    while !(10 + header.len() + 1).is_multiple_of(64) {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    for v in [1i64, 2, 3, 4] {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    put(dir, "i8_2.npy", &bytes)
}

/// One file per layout, prefixed by the byte that makes the `dataset` target pick it.
fn datasets(dir: &Path) -> Result<()> {
    let files: [(u8, &str, &str); 4] = [
        (
            0,
            "csv",
            "image,report,split,Edema\nimgs/a.png,\"FINDINGS: x.\nIMPRESSION: Mild edema.\",train,1\n/abs/b.jpg,No acute process.,val,\n",
        ),
        (
            1,
            "mimic",
            "dicom_id,study_id,subject_id,split\nd1,50000001,10000032,train\nd3,50000002,11000001,test\n",
        ),
        (
            2,
            "openi",
            r#"<?xml version="1.0"?><eCitation><MedlineCitation><Article><Abstract>
<AbstractText Label="FINDINGS">The heart is normal in size.</AbstractText>
<AbstractText Label="IMPRESSION">Normal chest.</AbstractText>
</Abstract></Article></MedlineCitation>
<parentImage id="CXR1_1_IM-0001-3001"><url>/x.jpg</url></parentImage></eCitation>"#,
        ),
        (
            3,
            "r2gen",
            r#"{"train": [{"id": "CXR2384_IM-0942", "report": "The lungs are clear.", "image_path": ["CXR2384_IM-0942/0.png"], "split": "train"}], "val": []}"#,
        ),
    ];
    for (which, name, text) in files {
        let mut bytes = vec![which];
        bytes.extend_from_slice(text.as_bytes());
        put(dir, name, &bytes)?;
    }
    Ok(())
}

/// Upload forms as the web page and curl send them: an image with options, and a question.
fn multipart(dir: &Path) -> Result<()> {
    let part = |name: &str, file: Option<&str>, value: &[u8]| {
        let mut p = format!("--fuzzboundary\r\nContent-Disposition: form-data; name=\"{name}\"");
        if let Some(f) = file {
            p += &format!("; filename=\"{f}\"\r\nContent-Type: application/octet-stream");
        }
        let mut bytes = (p + "\r\n\r\n").into_bytes();
        bytes.extend_from_slice(value);
        bytes.extend_from_slice(b"\r\n");
        bytes
    };
    let png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";
    let mut report = part("image", Some("scan.png"), png);
    for (k, v) in [
        ("temperature", "0"),
        ("max_tokens", "16"),
        ("stream", "true"),
        ("seed", "7"),
    ] {
        report.extend(part(k, None, v.as_bytes()));
    }
    report.extend_from_slice(b"--fuzzboundary--\r\n");
    put(dir, "report", &report)?;
    let mut ask = b"multipart/form-data; boundary=other\n".to_vec();
    let body = [
        part("image", Some("scan.dcm"), b"DICM"),
        part("question", None, b"Is there a pneumothorax?"),
    ]
    .concat();
    ask.extend(
        String::from_utf8(body)?
            .replace("fuzzboundary", "other")
            .into_bytes(),
    );
    ask.extend_from_slice(b"--other--\r\n");
    put(dir, "ask", &ask)
}
