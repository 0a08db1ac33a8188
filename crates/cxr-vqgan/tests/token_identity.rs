//! Token files are never mixed up: each image id has a token file of its own, and a token folder
//! records which VQ-GAN made its codes.

use std::collections::HashSet;

use cxr_vqgan::identity::{VqganIdentity, IDENTITY_FILE};
use cxr_vqgan::tokens::file_name;
use cxr_vqgan::VqganConfig;

#[test]
fn plain_ids_keep_their_token_file_names() {
    for id in ["d1", "CXR1_1_IM-0001-3001", "a_b", "x.y", "p10-s5_0"] {
        assert_eq!(file_name(id), format!("{id}.npy"));
    }
}

#[test]
fn distinct_ids_never_share_a_token_file() {
    // Sanitising by replacement made all of these `a_b.npy`.
    let ids = [
        "a/b", "a_b", "a b", "a\\b", "a%2Fb", "a%b", "a%25b", "ä", "a:b", "", ".", "..", "%",
        "%2E%",
    ];
    let names: Vec<String> = ids.iter().map(|id| file_name(id)).collect();
    let unique: HashSet<&String> = names.iter().collect();
    assert_eq!(unique.len(), ids.len(), "{names:?}");
    assert_eq!(file_name("a/b"), "a%2Fb.npy");
    for n in &names {
        assert!(!n.contains('/') && !n.contains('\\') && n != ".npy", "{n}");
    }
    // Very long ids stay within file-name limits and stay apart.
    let (long_a, long_b) = ("é".repeat(300), format!("{}x", "é".repeat(300)));
    let (na, nb) = (file_name(&long_a), file_name(&long_b));
    assert!(na.len() <= 210 && nb.len() <= 210, "{na}");
    assert_ne!(na, nb);
}

#[test]
fn a_token_folder_from_another_vqgan_is_refused_naming_both() {
    let dir = tempfile::tempdir().unwrap();
    let config = VqganConfig::preset("demo").unwrap();
    let (w1, w2) = (
        dir.path().join("a.safetensors"),
        dir.path().join("b.safetensors"),
    );
    std::fs::write(&w1, b"weights one").unwrap();
    std::fs::write(&w2, b"weights two").unwrap();
    let one = VqganIdentity::of(&w1, &config).unwrap();
    let two = VqganIdentity::of(&w2, &config).unwrap();
    assert_ne!(one.sha256, two.sha256);
    // The config is part of the identity: the same bytes read with another config differ.
    let other_config = VqganConfig::preset("demo-8x8").unwrap();
    assert_ne!(
        one.sha256,
        VqganIdentity::of(&w1, &other_config).unwrap().sha256
    );
    // And the path is not: a copy of the same weights is the same VQ-GAN.
    let copy = dir.path().join("copy.safetensors");
    std::fs::copy(&w1, &copy).unwrap();
    assert_eq!(
        one.sha256,
        VqganIdentity::of(&copy, &config).unwrap().sha256
    );

    let tokens = dir.path().join("tokens");
    std::fs::create_dir_all(&tokens).unwrap();
    assert_eq!(one.check_folder(&tokens).unwrap(), None);
    one.record(&tokens).unwrap();
    assert!(tokens.join(IDENTITY_FILE).is_file());
    assert_eq!(VqganIdentity::recorded(&tokens).unwrap(), Some(one.clone()));
    assert_eq!(one.check_folder(&tokens).unwrap(), Some(()));
    let e = two.check_folder(&tokens).unwrap_err().to_string();
    assert!(e.contains(&one.sha256) && e.contains(&two.sha256), "{e}");
    assert!(
        e.contains("a.safetensors") && e.contains("b.safetensors"),
        "{e}"
    );
    assert!(e.contains("holds codes from VQ-GAN"), "{e}");

    std::fs::write(tokens.join(IDENTITY_FILE), b"{not json").unwrap();
    let e = one.check_folder(&tokens).unwrap_err().to_string();
    assert!(e.contains("not a VQ-GAN identity"), "{e}");
}
