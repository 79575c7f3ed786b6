#![allow(clippy::unwrap_used)] // test code
//! The release as far as it can run here: every workflow passes actionlint
//! (with shellcheck for its scripts), no action is pinned to a major that
//! still runs on Node 20, `release.yml` builds and publishes both
//! architectures of both images and the chart, and both Dockerfiles build
//! either architecture. The workflow itself runs on GitHub's runners; the
//! images' manifest list is built here with buildah from the binaries
//! (`tests/tests/static_binaries.rs` builds and runs them).

use std::collections::BTreeMap;
use std::process::Command;

use logstream_tests::{aarch64_build_dir, cache_dir, musl_release_dir, repo_root};

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo_root().join(rel)).unwrap()
}

fn workflows() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(repo_root().join(".github/workflows"))
        .unwrap()
        .map(|e| e.unwrap().path().display().to_string())
        .filter(|p| p.ends_with(".yml") || p.ends_with(".yaml"))
        .collect();
    v.sort();
    v
}

#[test]
fn every_workflow_passes_actionlint_with_shellcheck() {
    let actionlint = cache_dir().join("tools/bin/actionlint");
    assert!(
        actionlint.is_file(),
        "{} is missing: run .ci/install-tools",
        actionlint.display()
    );
    let shellcheck = Command::new("shellcheck").arg("--version").output();
    assert!(
        shellcheck.is_ok_and(|o| o.status.success()),
        "shellcheck is missing: run .ci/install-tools (actionlint would skip the scripts)"
    );
    let out = Command::new(&actionlint)
        .args(["-color=false"])
        .args(workflows())
        .current_dir(repo_root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "actionlint:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The first major of each action that runs on Node 24 (GitHub runners
/// stopped running Node 20 actions in 2026), read from each action's
/// `action.yml` at its tags.
const NODE24_MAJORS: &[(&str, u32)] = &[
    ("actions/checkout", 5),
    ("actions/cache", 5),
    ("actions/setup-node", 5),
    ("actions/setup-go", 6),
    ("actions/upload-artifact", 6),
    ("actions/download-artifact", 7),
    ("actions/attest", 4),
    ("azure/setup-helm", 5),
    ("azure/setup-kubectl", 5),
    ("docker/setup-buildx-action", 4),
    ("docker/login-action", 4),
    ("docker/metadata-action", 6),
    ("docker/build-push-action", 7),
    ("sigstore/cosign-installer", 4),
];

#[test]
fn no_action_runs_on_node_20() {
    for path in workflows() {
        let text = std::fs::read_to_string(&path).unwrap();
        for line in text.lines() {
            let Some(uses) = line.trim().trim_start_matches("- ").strip_prefix("uses: ") else {
                continue;
            };
            let (action, version) = uses.split_once('@').unwrap();
            let major: u32 = version
                .trim_start_matches('v')
                .split('.')
                .next()
                .unwrap()
                .parse()
                .unwrap_or_else(|_| panic!("{path}: {uses} is not pinned to a version"));
            let Some((_, min)) = NODE24_MAJORS.iter().find(|(a, _)| *a == action) else {
                panic!("{path}: {action} is not in NODE24_MAJORS: look up its first Node 24 major");
            };
            assert!(
                major >= *min,
                "{path}: {uses} runs on Node 20 (Node 24 from v{min})"
            );
        }
    }
}

#[test]
fn the_release_builds_both_architectures_of_both_images_and_the_chart() {
    let w: serde_yaml::Value =
        serde_yaml::from_str(&read(".github/workflows/release.yml")).unwrap();
    let on = &w["on"];
    assert_eq!(on["push"]["tags"][0], "v*");
    assert!(
        on.get("pull_request").is_some(),
        "pull requests build it too"
    );
    let jobs = &w["jobs"];
    // Binaries: natively on both architectures.
    let targets: BTreeMap<String, String> = jobs["binaries"]["strategy"]["matrix"]["include"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["arch"].as_str().unwrap().to_string(),
                m["target"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        targets,
        BTreeMap::from([
            ("amd64".to_string(), "x86_64-unknown-linux-musl".to_string()),
            (
                "arm64".to_string(),
                "aarch64-unknown-linux-musl".to_string()
            ),
        ])
    );
    // Images: both, from the Dockerfiles' prebuilt stage, both platforms,
    // SBOM and provenance, signed and attested; published only from a tag.
    let images = &jobs["images"];
    let built: Vec<(&str, &str)> = images["strategy"]["matrix"]["include"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["image"].as_str().unwrap(),
                m["dockerfile"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        built,
        [
            ("logstream", "sidecar/Dockerfile"),
            ("logstream-operator", "operator/Dockerfile")
        ]
    );
    let perms = &images["permissions"];
    assert_eq!(perms["id-token"], "write", "keyless signing");
    assert_eq!(perms["packages"], "write");
    let steps = images["steps"].as_sequence().unwrap();
    let step = |uses: &str| {
        steps
            .iter()
            .find(|s| s["uses"].as_str().is_some_and(|u| u.starts_with(uses)))
            .unwrap_or_else(|| panic!("no {uses} step"))
    };
    let build = &step("docker/build-push-action")["with"];
    assert_eq!(build["platforms"], "linux/amd64,linux/arm64");
    assert_eq!(build["sbom"], true);
    assert_eq!(build["provenance"], "mode=max");
    let args = build["build-args"].as_str().unwrap();
    for a in ["BINARIES=prebuilt", "VERSION=", "REVISION="] {
        assert!(args.contains(a), "build-args lack {a}: {args}");
    }
    assert_eq!(step("docker/login-action")["if"], "env.PUBLISH == 'true'");
    let sign = steps
        .iter()
        .find(|s| s["run"].as_str().is_some_and(|r| r.contains("cosign sign")))
        .unwrap();
    assert_eq!(sign["if"], "env.PUBLISH == 'true'");
    assert_eq!(step("actions/attest")["with"]["push-to-registry"], true);
    assert!(
        images["env"]["PUBLISH"]
            .as_str()
            .unwrap()
            .contains("refs/tags/v"),
        "only a tag publishes"
    );
    // The chart: its version checked against the tag, pushed as OCI, signed.
    let check = serde_yaml::to_string(&jobs["chart-version"]).unwrap();
    assert!(check.contains("GITHUB_REF_NAME#v") && check.contains("appVersion"));
    let chart = serde_yaml::to_string(&jobs["chart"]).unwrap();
    for s in [
        "helm push",
        "oci://ghcr.io/logstream-dev/charts",
        "cosign sign",
    ] {
        assert!(chart.contains(s), "chart job lacks {s}");
    }
}

#[test]
fn both_dockerfiles_build_either_architecture() {
    for (file, bin) in [
        ("sidecar/Dockerfile", "logstream"),
        ("operator/Dockerfile", "logstream-operator"),
    ] {
        let text = read(file);
        for want in [
            "FROM --platform=$BUILDPLATFORM",
            "amd64) target=x86_64-unknown-linux-musl",
            "arm64) target=aarch64-unknown-linux-musl",
            "cargo zigbuild --release --locked --target \"$target\"",
            &format!("COPY --chmod=0755 dist/${{TARGETARCH}}/{bin} /out/{bin}"),
            "FROM ${BINARIES} AS binaries",
            &format!("COPY --from=binaries /out/{bin} /{bin}"),
        ] {
            assert!(text.contains(want), "{file} lacks {want:?}");
        }
    }
}

/// The release's image step, as far as it runs here: buildah builds each
/// Dockerfile for linux/amd64 and linux/arm64 from prebuilt binaries
/// (`BINARIES=prebuilt`, as release.yml passes it) into a manifest list;
/// it holds both platforms, each with its own architecture's binary and the
/// version and revision labels. (No push: nothing leaves the machine.)
#[test]
fn both_images_assemble_for_both_platforms_from_the_dockerfiles() {
    let store = tempfile::tempdir().unwrap();
    let root = store.path().join("root");
    let run = store.path().join("run");
    let buildah = |args: &[&str]| {
        let out = Command::new("buildah")
            .arg("--root")
            .arg(&root)
            .arg("--runroot")
            .arg(&run)
            .args(["--storage-driver", "vfs"])
            .args(args)
            .output()
            .expect("buildah (run .ci/install-tools)");
        assert!(
            out.status.success(),
            "buildah {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    for (bin, dockerfile) in [
        ("logstream", "sidecar/Dockerfile"),
        ("logstream-operator", "operator/Dockerfile"),
    ] {
        let ctx = tempfile::tempdir().unwrap();
        for (arch, dir) in [
            ("amd64", musl_release_dir()),
            ("arm64", aarch64_build_dir()),
        ] {
            let d = ctx.path().join("dist").join(arch);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::copy(dir.join(bin), d.join(bin)).unwrap();
        }
        let list = format!("localhost/{bin}:test");
        buildah(&[
            "bud",
            "--quiet",
            "--platform",
            "linux/amd64,linux/arm64",
            "--build-arg",
            "BINARIES=prebuilt",
            "--build-arg",
            "VERSION=9.9.9",
            "--build-arg",
            "REVISION=abc123",
            "--manifest",
            &list,
            "-f",
            &repo_root().join(dockerfile).display().to_string(),
            &ctx.path().display().to_string(),
        ]);
        let manifest: serde_json::Value =
            serde_json::from_str(&buildah(&["manifest", "inspect", &list])).unwrap();
        let mut platforms: Vec<(String, String)> = manifest["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["platform"]["os"].as_str().unwrap().to_string(),
                    m["platform"]["architecture"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        platforms.sort();
        assert_eq!(
            platforms,
            [
                ("linux".to_string(), "amd64".to_string()),
                ("linux".to_string(), "arm64".to_string())
            ],
            "{bin}: {manifest:#}"
        );
        for m in manifest["manifests"].as_array().unwrap() {
            let arch = m["platform"]["architecture"].as_str().unwrap();
            let image = format!("{list}@{}", m["digest"].as_str().unwrap());
            let config: serde_json::Value =
                serde_json::from_str(&buildah(&["inspect", "--type", "image", &image])).unwrap();
            let oci = &config["OCIv1"];
            assert_eq!(oci["architecture"], arch, "{bin}");
            let labels = &oci["config"]["Labels"];
            assert_eq!(labels["org.opencontainers.image.version"], "9.9.9", "{bin}");
            assert_eq!(
                labels["org.opencontainers.image.revision"], "abc123",
                "{bin}"
            );
            assert_eq!(oci["config"]["User"], "65532:65532", "{bin}");
        }
    }
}
