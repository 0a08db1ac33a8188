//! FID against pytorch-fid's formula in numpy/scipy on the same features
//! (scripts/reference/fid_fixture.py).

use cxr_eval::image_metrics::frechet_distance;

fn load() -> std::collections::HashMap<String, Vec<Vec<f32>>> {
    let bytes = include_bytes!("fixtures/fid_features.safetensors");
    let st = safetensors::SafeTensors::deserialize(bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            let dims = view.shape().to_vec();
            let flat: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            (name, flat.chunks(dims[1]).map(<[f32]>::to_vec).collect())
        })
        .collect()
}

#[test]
fn fid_matches_scipy() {
    let f = load();
    let reference: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/fid_reference.json")).unwrap();
    for (a, b, key) in [
        ("real", "close", "real_close"),
        ("real", "far", "real_far"),
        ("real", "real", "real_real"),
    ] {
        let ours = frechet_distance(&f[a], &f[b]);
        let want = reference[key].as_f64().unwrap();
        assert!(
            (ours - want).abs() < 1e-6 * want.abs().max(1.0),
            "{key}: ours {ours}, scipy {want}"
        );
    }
}
