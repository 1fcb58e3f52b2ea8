//! Link flags for libattn, without crates:
//!  1. $ATTN_LIB_DIR (a directory holding libattn.so), else
//!  2. the output of `pkg-config --libs attn` ($PKG_CONFIG overrides the binary;
//!     $PKG_CONFIG_PATH is honoured by pkg-config itself).
use std::env;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=ATTN_LIB_DIR");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");

    if let Ok(dir) = env::var("ATTN_LIB_DIR") {
        if !dir.is_empty() {
            println!("cargo:rustc-link-search=native={}", dir);
            println!("cargo:rustc-link-lib=dylib=attn");
            return;
        }
    }

    let pkg_config = env::var("PKG_CONFIG").unwrap_or_else(|_| "pkg-config".to_string());
    let output = match Command::new(&pkg_config).args(["--libs", "attn"]).output() {
        Ok(o) => o,
        Err(e) => panic!(
            "attn-sys: cannot run `{} --libs attn` ({}); install pkg-config and libattn-dev, \
             or set ATTN_LIB_DIR to the directory holding libattn.so",
            pkg_config, e
        ),
    };
    if !output.status.success() {
        panic!(
            "attn-sys: `{} --libs attn` failed: {}; install libattn-dev, set PKG_CONFIG_PATH, \
             or set ATTN_LIB_DIR to the directory holding libattn.so",
            pkg_config,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let mut linked = false;
    for flag in String::from_utf8_lossy(&output.stdout).split_whitespace() {
        if let Some(dir) = flag.strip_prefix("-L") {
            println!("cargo:rustc-link-search=native={}", dir);
        } else if let Some(lib) = flag.strip_prefix("-l") {
            println!("cargo:rustc-link-lib={}", lib);
            linked |= lib == "attn";
        }
    }
    if !linked {
        println!("cargo:rustc-link-lib=dylib=attn");
    }
}
