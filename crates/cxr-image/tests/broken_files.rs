//! A corpus of broken files on disk: each gives its own typed error naming the file, never a
//! panic and never an allocation the header asks for.

use std::path::Path;

use cxr_image::{load_image, ImageError};

fn jpeg_bytes() -> Vec<u8> {
    let img = image::GrayImage::from_fn(48, 40, |x, y| image::Luma([(x * 5 + y * 3) as u8]));
    let mut out = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut out),
        image::ImageFormat::Jpeg,
    )
    .unwrap();
    out
}

#[test]
fn each_broken_file_gets_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let jpeg = jpeg_bytes();
    let mut huge_jpeg = jpeg.clone();
    // Patch the SOF0 frame header's height and width to 60000 x 60000.
    let sof = huge_jpeg
        .windows(2)
        .position(|w| w == [0xFF, 0xC0])
        .unwrap();
    huge_jpeg[sof + 5..sof + 7].copy_from_slice(&60000u16.to_be_bytes());
    huge_jpeg[sof + 7..sof + 9].copy_from_slice(&60000u16.to_be_bytes());
    type IsExpected = fn(&ImageError) -> bool;
    let corpus: Vec<(&str, Vec<u8>, IsExpected)> = vec![
        ("empty.png", vec![], |e| {
            matches!(e, ImageError::Empty { .. })
        }),
        (
            "notes.jpg",
            b"radiology report, not an image".to_vec(),
            |e| matches!(e, ImageError::UnknownFormat { .. }),
        ),
        ("truncated.jpg", jpeg[..jpeg.len() / 3].to_vec(), |e| {
            matches!(e, ImageError::Corrupt { .. })
        }),
        ("header-only.jpg", jpeg[..20].to_vec(), |e| {
            matches!(e, ImageError::Corrupt { .. })
        }),
        ("huge.jpg", huge_jpeg, |e| {
            matches!(
                e,
                ImageError::Dimensions {
                    width: 60000,
                    height: 60000,
                    ..
                }
            )
        }),
        (
            "fake.dcm",
            {
                let mut b = vec![0u8; 128];
                b.extend_from_slice(b"DICM");
                b.extend_from_slice(&[0xFF; 40]);
                b
            },
            |e| matches!(e, ImageError::Corrupt { .. }),
        ),
    ];
    for (name, bytes, expected) in corpus {
        let path = dir.path().join(name);
        std::fs::write(&path, &bytes).unwrap();
        let err = load_image(&path).expect_err(name);
        assert!(expected(&err), "{name}: unexpected {err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains(name),
            "{name}: message does not name the file: {msg}"
        );
    }
    let missing = load_image(Path::new("/nonexistent/chest.dcm")).unwrap_err();
    assert!(matches!(missing, ImageError::Io { .. }));
    assert!(missing.to_string().contains("/nonexistent/chest.dcm"));
}
