//! The binary starts without LD_LIBRARY_PATH, finds the libtorch it was built against, and runs
//! tensor ops on it.

use std::process::Command;

#[test]
fn doctor_reports_the_loaded_libtorch() {
    let out = Command::new(env!("CARGO_BIN_EXE_prism"))
        .args(["doctor", "--json"])
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .expect("run prism doctor");
    assert!(
        out.status.success(),
        "prism doctor failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("doctor prints JSON");
    let version = v["libtorch_version"].as_str().expect("libtorch_version");
    assert!(
        version.starts_with("2.11.0"),
        "expected libtorch 2.11.0, got {version}"
    );
    assert!(v["intra_op_threads"].as_i64().unwrap() >= 1);
    let cuda = v["cuda_available"].as_bool().unwrap();
    let devices = v["cuda_devices"].as_i64().unwrap();
    assert_eq!(
        cuda,
        devices > 0,
        "cuda_available must agree with the device count"
    );
}

#[test]
fn libtorch_computes() {
    let a = tch::Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]).reshape([2, 2]);
    let b = a.matmul(&a);
    let got: Vec<f32> = Vec::try_from(b.reshape([-1])).unwrap();
    assert_eq!(got, vec![7.0, 10.0, 15.0, 22.0]);
}
