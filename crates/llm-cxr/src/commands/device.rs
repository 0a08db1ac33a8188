//! `--device`: where the commands that compute with a model run (`cpu`, `cuda`, `cuda:N`). One
//! argument struct, flattened into each of them, so every command spells and checks it alike.
//! The flag parses to a [`DeviceSpec`] without touching a GPU (the main job reads its stages'
//! recorded command lines back on any machine); a command opens it with [`DeviceArg::open`]
//! before its work starts.

use anyhow::Context;
use candle_core::Device;

/// The `--device` flag.
#[derive(clap::Args, Clone, Debug, serde::Serialize)]
pub struct DeviceArg {
    /// Where the model computes: `cpu`, `cuda` (the first GPU) or `cuda:N` (GPU N). CUDA needs a
    /// binary built with `--features cuda` (docs/gpu.md).
    #[arg(long, default_value = "cpu", value_parser = parse_device, value_name = "DEVICE")]
    pub device: DeviceSpec,
}

impl DeviceArg {
    /// The device, opened: a binary without CUDA, or a GPU that is not there, is an error here.
    pub fn open(&self) -> anyhow::Result<Device> {
        self.device.open()
    }
}

/// A device by name, not yet opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceSpec {
    Cpu,
    Cuda(usize),
}

impl DeviceSpec {
    pub fn open(self) -> anyhow::Result<Device> {
        let ordinal = match self {
            DeviceSpec::Cpu => return Ok(Device::Cpu),
            DeviceSpec::Cuda(n) => n,
        };
        if !candle_core::utils::cuda_is_available() {
            anyhow::bail!(
                "--device {self}: this binary was built without CUDA: use `cpu`, or build with \
                 `--features cuda` (docs/gpu.md)"
            );
        }
        Device::new_cuda(ordinal)
            .with_context(|| format!("--device {self}: cannot open GPU {ordinal}"))
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// Written as the flag reads it back (the main job writes its stages' command lines).
impl serde::Serialize for DeviceSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The forms `--device` accepts, as its errors list them.
const ACCEPTED: &str = "`cpu`, `cuda` or `cuda:N` (N: the GPU's index, from 0)";

/// Parses `cpu`, `cuda` (= `cuda:0`) or `cuda:N`.
pub fn parse_device(text: &str) -> Result<DeviceSpec, String> {
    match text {
        "cpu" => Ok(DeviceSpec::Cpu),
        "cuda" => Ok(DeviceSpec::Cuda(0)),
        _ => text
            .strip_prefix("cuda:")
            .and_then(|n| n.parse::<usize>().ok())
            .map(DeviceSpec::Cuda)
            .ok_or_else(|| format!("expected {ACCEPTED}")),
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

    fn parse(args: &[&str]) -> Result<DeviceSpec, clap::Error> {
        Cli::try_parse_from(std::iter::once("llm-cxr").chain(args.iter().copied()))
            .map(|c| c.device.device)
    }

    #[test]
    fn cpu_is_the_default_and_parses() {
        assert_eq!(parse(&[]).unwrap(), DeviceSpec::Cpu);
        assert_eq!(parse(&["--device", "cpu"]).unwrap(), DeviceSpec::Cpu);
        assert!(DeviceSpec::Cpu.open().unwrap().is_cpu());
        assert_eq!(
            serde_json::to_value(DeviceArg {
                device: DeviceSpec::Cpu
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

    /// `cuda` and `cuda:N` parse on any build (a recorded command line reads back anywhere) and
    /// are written back as they read; opening one on a build without CUDA says so, on one with
    /// it opens the GPU or names the one that is not there.
    #[test]
    fn cuda_forms_parse_anywhere_and_open_or_say_why_not() {
        for (text, ordinal) in [("cuda", 0), ("cuda:0", 0), ("cuda:1", 1)] {
            let spec = parse(&["--device", text]).unwrap();
            assert_eq!(spec, DeviceSpec::Cuda(ordinal));
            let written = serde_json::to_value(DeviceArg { device: spec }).unwrap();
            assert_eq!(written["device"], format!("cuda:{ordinal}"));
            match spec.open() {
                Ok(device) => assert!(device.is_cuda(), "{text}"),
                Err(e) if !candle_core::utils::cuda_is_available() => {
                    let e = e.to_string();
                    assert!(e.contains("built without CUDA") && e.contains(text), "{e}");
                }
                Err(e) => assert!(format!("{e:#}").contains(&format!("GPU {ordinal}")), "{e}"),
            }
        }
    }
}
