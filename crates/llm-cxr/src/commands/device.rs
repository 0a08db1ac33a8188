//! `--device`: where the commands that compute with a model run (`cpu`, `cuda`, `cuda:N`). One
//! argument struct, flattened into each of them, so every command spells and checks it alike.

use candle_core::{Device, DeviceLocation};

/// The `--device` flag.
#[derive(clap::Args, Clone, Debug, serde::Serialize)]
pub struct DeviceArg {
    /// Where the model computes: `cpu`, `cuda` (the first GPU) or `cuda:N` (GPU N). CUDA needs a
    /// binary built with candle's `cuda` feature.
    #[arg(long, default_value = "cpu", value_parser = parse_device, value_name = "DEVICE")]
    #[serde(serialize_with = "serialize_device")]
    pub device: Device,
}

/// The forms `--device` accepts, as its errors list them.
const ACCEPTED: &str = "`cpu`, `cuda` or `cuda:N` (N: the GPU's index, from 0)";

/// Parses `cpu`, `cuda` (= `cuda:0`) or `cuda:N` into a device; CUDA ones are opened here, so
/// that a binary without CUDA, or a GPU that is not there, fails before any work starts.
pub fn parse_device(text: &str) -> Result<Device, String> {
    let ordinal = match text {
        "cpu" => return Ok(Device::Cpu),
        "cuda" => 0,
        _ => text
            .strip_prefix("cuda:")
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| format!("expected {ACCEPTED}"))?,
    };
    if !candle_core::utils::cuda_is_available() {
        return Err(
            "this binary was built without CUDA: use `cpu`, or build with `--features cuda` \
             (docs/gpu.md)"
                .into(),
        );
    }
    Device::new_cuda(ordinal).map_err(|e| format!("cannot open GPU {ordinal}: {e}"))
}

/// A device by the name [`parse_device`] reads back (`cpu`, `cuda:N`): the main job writes its
/// stages' command lines from their argument structs.
fn serialize_device<S: serde::Serializer>(device: &Device, s: S) -> Result<S::Ok, S::Error> {
    match device.location() {
        DeviceLocation::Cpu => s.serialize_str("cpu"),
        DeviceLocation::Cuda { gpu_id } => s.serialize_str(&format!("cuda:{gpu_id}")),
        DeviceLocation::Metal { gpu_id } => s.serialize_str(&format!("metal:{gpu_id}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        device: DeviceArg,
    }

    fn parse(args: &[&str]) -> Result<Device, clap::Error> {
        Cli::try_parse_from(std::iter::once("llm-cxr").chain(args.iter().copied()))
            .map(|c| c.device.device)
    }

    #[test]
    fn cpu_is_the_default_and_parses() {
        assert!(parse(&[]).unwrap().is_cpu());
        assert!(parse(&["--device", "cpu"]).unwrap().is_cpu());
        assert_eq!(
            serde_json::to_value(DeviceArg {
                device: Device::Cpu
            })
            .unwrap(),
            serde_json::json!({"device": "cpu"})
        );
    }

    #[test]
    fn unknown_spellings_are_refused_listing_the_accepted_forms() {
        for bad in ["gpu", "cuda:x", "cuda:", "cuda:-1", "CPU", "cuda0", ""] {
            let e = parse(&["--device", bad]).expect_err(bad).to_string();
            assert!(e.contains("`cpu`, `cuda` or `cuda:N`"), "{bad}: {e}");
        }
    }

    /// `cuda` and `cuda:N` are accepted forms: on a build without CUDA they fail saying so, on
    /// one with it they open the GPU (or name the one that is not there).
    #[test]
    fn cuda_forms_parse_to_a_gpu_or_say_why_not() {
        for (text, ordinal) in [("cuda", 0), ("cuda:0", 0), ("cuda:1", 1)] {
            match parse_device(text) {
                Ok(device) => {
                    assert_eq!(
                        device.location(),
                        DeviceLocation::Cuda { gpu_id: ordinal },
                        "{text}"
                    );
                    let written = serde_json::to_value(DeviceArg { device }).unwrap();
                    assert_eq!(written["device"], format!("cuda:{ordinal}"));
                }
                Err(e) if !candle_core::utils::cuda_is_available() => {
                    assert!(e.contains("built without CUDA"), "{text}: {e}");
                    let shown = parse(&["--device", text]).unwrap_err().to_string();
                    assert!(
                        shown.contains(text) && shown.contains("without CUDA"),
                        "{shown}"
                    );
                }
                Err(e) => assert!(e.contains(&format!("GPU {ordinal}")), "{text}: {e}"),
            }
        }
    }
}
