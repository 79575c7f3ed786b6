#![allow(clippy::unwrap_used)] // test code
//! The krew manifest template (`.krew.yaml`) and the release workflow
//! (`.github/workflows/plugin-release.yml`) name the same platforms and
//! archives, and the template renders (as krew-release-bot fills it in) to a
//! manifest krew can read: every platform a selector, a URL, a sha256 and
//! the binary's name.

use std::collections::BTreeSet;

use logstream_tests::repo_root;

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo_root().join(rel)).unwrap()
}

/// The template with the tag and each `addURIAndSha` filled in.
fn render(template: &str, tag: &str) -> String {
    template
        .lines()
        .map(|l| {
            let l = l.replace("{{ .TagName }}", tag);
            match l.trim().strip_prefix("{{addURIAndSha \"") {
                Some(rest) => {
                    let url = rest.split('"').next().unwrap();
                    let indent = &l[..l.len() - l.trim_start().len()];
                    format!("{indent}uri: {url}\n{indent}sha256: {}", "0".repeat(64))
                }
                None => l,
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_krew_manifest_and_the_release_workflow_agree() {
    let manifest: serde_yaml::Value =
        serde_yaml::from_str(&render(&read(".krew.yaml"), "v1.2.3")).unwrap();
    assert_eq!(manifest["kind"], "Plugin");
    assert_eq!(manifest["metadata"]["name"], "logstream");
    assert_eq!(manifest["spec"]["version"], "v1.2.3");
    let mut in_manifest = BTreeSet::new();
    for p in manifest["spec"]["platforms"].as_sequence().unwrap() {
        let labels = &p["selector"]["matchLabels"];
        let (os, arch) = (
            labels["os"].as_str().unwrap(),
            labels["arch"].as_str().unwrap(),
        );
        let archive = format!("kubectl-logstream-{os}-{arch}.tar.gz");
        assert_eq!(
            p["uri"].as_str().unwrap(),
            format!(
                "https://github.com/logstream-dev/logstream/releases/download/v1.2.3/{archive}"
            )
        );
        assert_eq!(p["sha256"].as_str().unwrap().len(), 64);
        assert_eq!(p["bin"], "kubectl-logstream");
        in_manifest.insert((os.to_string(), arch.to_string()));
    }
    let workflow: serde_yaml::Value =
        serde_yaml::from_str(&read(".github/workflows/plugin-release.yml")).unwrap();
    let in_workflow: BTreeSet<(String, String)> =
        workflow["jobs"]["build"]["strategy"]["matrix"]["include"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["os"].as_str().unwrap().to_string(),
                    m["arch"].as_str().unwrap().to_string(),
                )
            })
            .collect();
    assert_eq!(in_manifest, in_workflow);
    let want: BTreeSet<(String, String)> = [
        ("linux", "amd64"),
        ("linux", "arm64"),
        ("darwin", "amd64"),
        ("darwin", "arm64"),
    ]
    .iter()
    .map(|(o, a)| (o.to_string(), a.to_string()))
    .collect();
    assert_eq!(in_workflow, want);
}
