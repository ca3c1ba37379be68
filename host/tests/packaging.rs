//! The container images are built from what the tree really has: every path a Dockerfile
//! copies from the build context exists, every stage copied from is defined before it, the
//! files copied out of the build stages are the ones their commands produce (the same commands
//! CI runs), and the final image puts the policies where the operator looks for them by
//! default. No Docker engine runs here, so this reads the Dockerfiles rather than building them.

use std::path::{Path, PathBuf};

use celery_operator::policy::registry::INSTALLED_BUILTINS;

#[path = "common/dockerfile.rs"]
mod dockerfile;
use dockerfile::{Stage, copy, stages};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Checks the COPYs of one Dockerfile against its context; returns the stages.
fn check_copies(dockerfile: &Path, context: &Path) -> Vec<Stage> {
    let text = std::fs::read_to_string(dockerfile).expect("Dockerfile");
    let stages = stages(&text);
    assert!(!stages.is_empty(), "{} has no FROM", dockerfile.display());
    for (index, stage) in stages.iter().enumerate() {
        for i in stage.body.iter().filter(|i| i.keyword == "COPY" || i.keyword == "ADD") {
            let (from, sources, _) = copy(&i.args);
            match from {
                None => {
                    for source in sources {
                        assert!(context.join(&source).exists(), "{}: COPY {source}: not in the tree", dockerfile.display());
                    }
                }
                Some(from) if from.contains(':') || from.contains('/') => {} // an image
                Some(from) => {
                    let defined = stages[..index].iter().any(|s| s.name.as_deref() == Some(from.as_str()));
                    assert!(defined, "{}: COPY --from={from}: no such stage before it", dockerfile.display());
                }
            }
        }
    }
    stages
}

fn stage<'a>(stages: &'a [Stage], name: &str) -> &'a Stage {
    stages.iter().find(|s| s.name.as_deref() == Some(name)).unwrap_or_else(|| panic!("no stage {name}"))
}

fn runs(stage: &Stage, command: &str) -> bool {
    stage.body.iter().any(|i| i.keyword == "RUN" && i.args.contains(command))
}

#[test]
fn the_operator_image_is_built_from_the_tree_with_the_ci_commands() {
    let stages = check_copies(&root().join("Dockerfile"), &root());
    let last = stages.last().expect("a final stage");
    let copies: Vec<_> = last.body.iter().filter(|i| i.keyword == "COPY").map(|i| copy(&i.args)).collect();

    // The binary: what `cargo build --release -p celery-operator` writes under WORKDIR /src.
    let operator = stage(&stages, "operator");
    assert!(runs(operator, "cargo build --release -p celery-operator"), "the operator stage builds the binary");
    assert!(operator.body.iter().any(|i| i.keyword == "WORKDIR" && i.args == "/src"));
    // The crate compiles the WIT package from ../wit (bindgen!), so the stage must have it.
    let bindgen = std::fs::read_to_string(root().join("host/src/policy/component.rs")).expect("component.rs");
    assert!(bindgen.contains("path: \"../wit\""));
    let copied: Vec<String> = operator.body.iter().filter(|i| i.keyword == "COPY").flat_map(|i| copy(&i.args).1).collect();
    for needed in ["Cargo.toml", "Cargo.lock", "host", "wit"] {
        assert!(copied.iter().any(|c| c == needed), "the operator stage lacks {needed}: {copied:?}");
    }
    let binary = copies.iter().find(|(from, _, _)| from.as_deref() == Some("operator")).expect("the binary is copied");
    assert_eq!(binary.1, ["/src/target/release/celery-operator"]);
    let entrypoint = last.body.iter().find(|i| i.keyword == "ENTRYPOINT").expect("ENTRYPOINT");
    assert!(entrypoint.args.contains(&binary.2), "ENTRYPOINT runs {}: {}", binary.2, entrypoint.args);

    // The policies: what policies/build.sh (which CI runs too) writes, where the operator looks.
    let policies = stage(&stages, "policies");
    assert!(runs(policies, "policies/build.sh"), "the policies stage runs the CI's build script");
    let script = std::fs::read_to_string(root().join("policies/build.sh")).expect("build.sh");
    assert!(script.contains("OUT=\"$ROOT/target/policies\""), "build.sh writes target/policies");
    let modules = copies.iter().find(|(from, _, _)| from.as_deref() == Some("policies")).expect("the policies are copied");
    assert_eq!(modules.1, ["/src/target/policies/"]);
    assert_eq!(modules.2.trim_end_matches('/'), INSTALLED_BUILTINS, "where the operator looks by default");

    // Not root.
    let user = last.body.iter().rev().find(|i| i.keyword == "USER").expect("USER");
    assert!(!user.args.starts_with('0') && user.args != "root", "runs as {}", user.args);
}

#[test]
fn the_example_image_is_built_from_the_tree() {
    let dir = root().join("example");
    let stages = check_copies(&dir.join("Dockerfile"), &dir);
    let last = stages.last().expect("a stage");
    let user = last.body.iter().rev().find(|i| i.keyword == "USER").expect("USER");
    assert_ne!(user.args, "root");
    let requirements = std::fs::read_to_string(dir.join("requirements.txt")).expect("requirements.txt");
    for package in ["celery", "flower"] {
        let pinned = requirements.lines().any(|l| l.starts_with(package) && l.contains("=="));
        assert!(pinned, "{package} is pinned in example/requirements.txt");
    }
}

#[test]
fn the_parser_sees_what_the_checks_rely_on() {
    let text = "FROM a:1 AS one\nRUN make \\\n  all\n# comment\nCOPY --from=one --chown=1:1 /x /y /z/\nFROM b\n";
    let s = stages(text);
    assert_eq!((s.len(), s[0].name.as_deref(), s[1].name.as_deref()), (2, Some("one"), None));
    assert_eq!(s[0].body[0].args, "make  all");
    assert_eq!(copy(&s[0].body[1].args), (Some("one".into()), vec!["/x".into(), "/y".into()], "/z/".into()));
}
