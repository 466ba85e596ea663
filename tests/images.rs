//! Issue 15: images as Docker users know them — docker-archive and OCI
//! layout in and out, interoperable with skopeo and umoci, the image
//! config honoured by `run`, and hostile archives refused with nothing
//! left behind.
mod common;
use common::*;
use std::collections::BTreeMap;
use std::io::Read as _;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Runs isolab in `home`; panics with its stderr unless it succeeds.
fn ok(home: &Path, args: &[&str]) -> String {
    let out = isolab()
        .args(args)
        .env("ISOLAB_HOME", home)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "isolab {args:?}: {}{}",
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

/// Runs isolab in `home`, expecting a refusal; returns its stderr.
fn refused(home: &Path, args: &[&str]) -> String {
    let out = isolab()
        .args(args)
        .env("ISOLAB_HOME", home)
        .output()
        .unwrap();
    assert!(!out.status.success(), "isolab {args:?} must fail");
    stderr(&out)
}

fn tool(name: &str, args: &[&str]) {
    let out = std::process::Command::new(name)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{name} {args:?}: {}{}",
        stdout(&out),
        stderr(&out)
    );
}

fn have(tool: &str) -> bool {
    std::process::Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A tree as (path → kind, mode, link target or content hash).
fn tree_of(root: &Path) -> BTreeMap<String, String> {
    use sha2::Digest;
    let mut out = BTreeMap::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let mode = m.permissions().mode() & 0o7777;
            let v = if m.file_type().is_symlink() {
                format!("link {}", std::fs::read_link(&p).unwrap().display())
            } else if m.is_dir() {
                todo.push(p.clone());
                format!("dir {mode:o}")
            } else {
                let data = std::fs::read(&p).unwrap();
                format!("file {mode:o} {:x}", sha2::Sha256::digest(&data))
            };
            out.insert(rel, v);
        }
    }
    out
}

/// The same tree from isolab's side: its merged layers.
fn isolab_tree(home: &Path, name: &str) -> BTreeMap<String, String> {
    use isolab_runtime::initramfs::Node;
    use sha2::Digest;
    let store = isolab_runtime::image::Store::new(home);
    let img = store.open(name).unwrap();
    isolab_runtime::initramfs::merged_tree(&store, &img)
        .unwrap()
        .into_iter()
        .filter(|(p, _)| !p.is_empty())
        .map(|(p, n)| {
            let v = match n {
                Node::Dir { mode } => format!("dir {:o}", mode & 0o7777),
                Node::File { mode, data } => {
                    format!("file {:o} {:x}", mode & 0o7777, sha2::Sha256::digest(&data))
                }
                Node::Symlink { target } => format!("link {target}"),
            };
            (p.trim_start_matches('/').to_owned(), v)
        })
        .collect()
}

#[test]
fn images_go_through_skopeo_and_umoci_and_keep_their_config() {
    if !require("root (containers)", is_root())
        || !require("skopeo (apt-get install skopeo)", have("skopeo"))
        || !require("umoci (apt-get install umoci)", have("umoci"))
    {
        return;
    }
    let home = home();
    let h = home.path();
    let work = tempfile::tempdir().unwrap();
    let w = |n: &str| work.path().join(n).display().to_string();
    ok(h, &["image", "build"]);

    // isolab → OCI archive → a layout directory umoci can edit: give the
    // image a config the way a Dockerfile would.
    ok(
        h,
        &[
            "image",
            "save",
            "--format",
            "oci",
            "-o",
            &w("base.tar"),
            "default",
        ],
    );
    tool(
        "skopeo",
        &[
            "copy",
            &format!("oci-archive:{}:default", w("base.tar")),
            &format!("oci:{}:configured", w("layout")),
        ],
    );
    tool(
        "umoci",
        &[
            "config",
            "--image",
            &format!("{}:configured", w("layout")),
            "--config.entrypoint",
            "/bin/sh",
            "--config.cmd",
            "-c",
            "--config.cmd",
            "id -u; id -g; pwd; echo $GREETING",
            "--config.env",
            "GREETING=hello",
            "--config.workingdir",
            "/tmp",
            "--config.user",
            "nobody",
            "--config.exposedports",
            "8080/tcp",
            "--config.label",
            "course=isolab",
        ],
    );
    // The layout directory, loaded as it is.
    let out = ok(h, &["image", "load", "-i", &w("layout")]);
    assert!(out.contains("loaded image configured"), "{out}");
    let run = |image: &str| ok(h, &["run", "--image", image]);
    assert_eq!(
        run("configured"),
        "65534\n65534\n/tmp\nhello\n",
        "the image's config, as docker run honours it"
    );
    // run flags override it, as Docker's do.
    let out = ok(
        h,
        &[
            "run",
            "--image",
            "configured",
            "-u",
            "0",
            "-w",
            "/",
            "-e",
            "GREETING=bye",
        ],
    );
    assert_eq!(out, "0\n0\n/\nbye\n");
    let out = ok(
        h,
        &[
            "run",
            "--image",
            "configured",
            "--",
            "-c",
            "echo replaced cmd",
        ],
    );
    assert_eq!(
        out, "replaced cmd\n",
        "a command replaces Cmd and keeps Entrypoint"
    );
    let inspect: serde_json::Value =
        serde_json::from_str(&ok(h, &["image", "inspect", "configured"])).unwrap();
    assert_eq!(inspect["config"]["exposed_ports"][0], "8080/tcp");
    assert_eq!(inspect["config"]["labels"]["course"], "isolab");

    // umoci's unpack of the same image is the same tree as isolab's.
    tool(
        "umoci",
        &[
            "unpack",
            "--image",
            &format!("{}:configured", w("layout")),
            &w("bundle"),
        ],
    );
    let theirs = tree_of(&work.path().join("bundle/rootfs"));
    let ours = isolab_tree(h, "configured");
    assert!(theirs.len() > 10, "{theirs:?}");
    assert_eq!(ours, theirs, "umoci unpack and isolab's layers differ");

    // skopeo: OCI layout → docker-archive (a name with a tag) → isolab.
    tool(
        "skopeo",
        &[
            "copy",
            &format!("oci:{}:configured", w("layout")),
            &format!("docker-archive:{}:demo/configured:v2", w("docker.tar")),
        ],
    );
    let out = ok(h, &["image", "load", "-i", &w("docker.tar")]);
    assert!(out.contains("loaded image demo/configured:v2"), "{out}");
    assert_eq!(run("demo/configured:v2"), "65534\n65534\n/tmp\nhello\n");

    // isolab's docker-archive → skopeo → isolab again, under a new tag.
    ok(
        h,
        &["image", "save", "-o", &w("again.tar"), "demo/configured:v2"],
    );
    tool(
        "skopeo",
        &[
            "copy",
            &format!("docker-archive:{}", w("again.tar")),
            &format!("oci-archive:{}:back", w("back.tar")),
        ],
    );
    let out = ok(
        h,
        &["image", "load", "-i", &w("back.tar"), "--tag", "back:1"],
    );
    assert!(out.contains("loaded image back:1"), "{out}");
    assert_eq!(run("back:1"), "65534\n65534\n/tmp\nhello\n");
    // Tags are names for the same layers; `back` is not `back:1`.
    ok(h, &["image", "tag", "back:1", "back:latest"]);
    assert_eq!(run("back"), "65534\n65534\n/tmp\nhello\n");
    let ls = ok(h, &["image", "ls"]);
    let rows: Vec<Vec<&str>> = ls
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    for (repo, tag) in [
        ("back", "1"),
        ("back", "latest"),
        ("configured", "<none>"),
        ("demo/configured", "v2"),
        ("default", "<none>"),
    ] {
        assert!(
            rows.iter().any(|r| r[0] == repo && r[1] == tag),
            "{repo}:{tag} in {ls}"
        );
    }
    // Every image here shares its base layer with the others.
    assert!(rows.iter().all(|r| r[r.len() - 2] != "0.0"), "{ls}");
}

/// A minimal OCI layout with one uncompressed layer, written by hand.
fn write_layout(dir: &Path) -> (String, String) {
    use sha2::Digest;
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_size(3);
    h.set_mode(0o755);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, "hello", &b"hi\n"[..]).unwrap();
    let layer = b.into_inner().unwrap();
    let put = |data: &[u8]| {
        let d = format!("{:x}", sha2::Sha256::digest(data));
        std::fs::write(blobs.join(&d), data).unwrap();
        d
    };
    let l = put(&layer);
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/hello"]},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{l}")]},
    }))
    .unwrap();
    let c = put(&config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{c}"), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": format!("sha256:{l}"), "size": layer.len()}],
    }))
    .unwrap();
    let m = put(&manifest);
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{m}"), "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": "handmade:1"},
        }]}))
        .unwrap(),
    )
    .unwrap();
    (l, m)
}

/// What a load may leave in a home: image records, layers and blobs.
fn store_state(home: &Path) -> Vec<String> {
    let mut v = Vec::new();
    for sub in ["images", "layers", "blobs", ""] {
        for e in std::fs::read_dir(home.join(sub))
            .into_iter()
            .flatten()
            .flatten()
        {
            v.push(format!("{sub}/{}", e.file_name().to_string_lossy()));
        }
    }
    v.sort();
    v
}

#[test]
fn hostile_archives_are_refused_in_one_sentence_and_leave_nothing() {
    let home = home();
    let h = home.path();
    let work = tempfile::tempdir().unwrap();
    // The hand-made layout loads (the baseline for every variant below).
    let good = work.path().join("good");
    write_layout(&good);
    let out = ok(h, &["image", "load", "-i", good.to_str().unwrap()]);
    assert!(out.contains("loaded image handmade:1"), "{out}");
    let before = store_state(h);

    let variant = |name: &str, edit: &dyn Fn(&Path, &str, &str)| {
        let d = work.path().join(name);
        let (l, m) = write_layout(&d);
        edit(&d, &l, &m);
        d
    };
    let index = |d: &Path, f: &dyn Fn(&mut serde_json::Value)| {
        let p = d.join("index.json");
        let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        f(&mut v);
        std::fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
    };
    let cases: Vec<(&str, std::path::PathBuf, &str)> = vec![
        (
            "a layer whose bytes do not match its digest",
            variant("tampered", &|d, l, _| {
                let p = d.join("blobs/sha256").join(l);
                let mut b = std::fs::read(&p).unwrap();
                b[600] ^= 1;
                std::fs::write(p, b).unwrap();
            }),
            "does not match its digest",
        ),
        (
            "a descriptor pointing outside the blob store",
            variant("escape", &|d, _, _| {
                index(d, &|v| {
                    v["manifests"][0]["digest"] = "sha256:../../../etc/passwd".into()
                })
            }),
            "is not sha256:<64 lowercase hex digits>",
        ),
        (
            "a layer media type the lab does not take",
            variant("zstd", &|d, _, m| {
                // Rewrite the manifest (and its digest in the index).
                use sha2::Digest;
                let p = d.join("blobs/sha256").join(m);
                let mut v: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
                v["layers"][0]["mediaType"] = "application/vnd.oci.image.layer.v1.tar+zstd".into();
                let bytes = serde_json::to_vec(&v).unwrap();
                let nd = format!("{:x}", sha2::Sha256::digest(&bytes));
                std::fs::write(d.join("blobs/sha256").join(&nd), &bytes).unwrap();
                index(d, &|v| {
                    v["manifests"][0]["digest"] = format!("sha256:{nd}").into();
                    v["manifests"][0]["size"] = bytes.len().into();
                });
            }),
            "is not supported",
        ),
        (
            "a huge index",
            variant("huge", &|d, _, _| {
                std::fs::write(d.join("index.json"), vec![b' '; 5 << 20]).unwrap()
            }),
            "larger than",
        ),
        (
            "malformed JSON",
            variant("malformed", &|d, _, _| {
                std::fs::write(d.join("index.json"), b"{\"manifests\": [").unwrap()
            }),
            "not the JSON expected",
        ),
        (
            "a manifest whose digest is wrong",
            variant("wrongmanifest", &|d, _, m| {
                let p = d.join("blobs/sha256").join(m);
                let mut b = std::fs::read(&p).unwrap();
                b.push(b' ');
                std::fs::write(p, b).unwrap();
            }),
            "bytes where the descriptor says",
        ),
    ];
    for (what, dir, says) in cases {
        let err = refused(
            h,
            &["image", "load", "-i", dir.to_str().unwrap(), "--tag", "x:1"],
        );
        assert!(err.contains(says), "{what}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{what}: one sentence: {err}");
        assert_eq!(store_state(h), before, "{what} left something behind");
    }
    // A docker-archive whose manifest points outside the archive.
    let evil = work.path().join("evil.tar");
    {
        let mut b = tar::Builder::new(std::fs::File::create(&evil).unwrap());
        let manifest =
            br#"[{"Config":"../../../../etc/passwd","RepoTags":["evil:1"],"Layers":[]}]"#;
        let mut hd = tar::Header::new_ustar();
        hd.set_size(manifest.len() as u64);
        hd.set_mode(0o644);
        hd.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut hd, "manifest.json", &manifest[..])
            .unwrap();
        b.finish().unwrap();
    }
    let err = refused(h, &["image", "load", "-i", evil.to_str().unwrap()]);
    assert!(err.contains("refused"), "{err}");
    assert_eq!(
        store_state(h),
        before,
        "the docker-archive left something behind"
    );
    // A gzip bomb: 512 MiB of zeros in a half-MiB archive is refused before it
    // fills the disk.
    let bomb = work.path().join("bomb.tar.gz");
    {
        let gz = flate2::write::GzEncoder::new(
            std::fs::File::create(&bomb).unwrap(),
            flate2::Compression::fast(),
        );
        let mut b = tar::Builder::new(gz);
        let mut hd = tar::Header::new_gnu();
        hd.set_size(512 << 20);
        hd.set_mode(0o644);
        hd.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut hd, "manifest.json", std::io::repeat(0).take(512 << 20))
            .unwrap();
        b.into_inner().unwrap().finish().unwrap();
    }
    let err = refused(h, &["image", "load", "-i", bomb.to_str().unwrap()]);
    assert!(err.contains("decompression bomb"), "{err}");
    assert_eq!(store_state(h), before, "the bomb left something behind");
    // Not an archive at all.
    let junk = work.path().join("junk");
    std::fs::write(&junk, b"hello").unwrap();
    let err = refused(h, &["image", "load", "-i", junk.to_str().unwrap()]);
    assert!(err.contains("junk"), "{err}");
    assert_eq!(store_state(h), before);
}

#[test]
fn build_from_a_containerfile_layers_caches_and_interoperates() {
    if !require("root (RUN steps run in containers)", is_root()) {
        return;
    }
    let home = home();
    let h = home.path();
    let ctx = tempfile::tempdir().unwrap();
    let c = ctx.path();
    std::fs::create_dir_all(c.join("app")).unwrap();
    std::fs::create_dir_all(c.join("build")).unwrap();
    std::fs::write(c.join("app/hello.txt"), "hello from copy\n").unwrap();
    std::fs::write(c.join("app/debug.log"), "not copied\n").unwrap();
    std::fs::write(c.join("build/out.o"), "not copied\n").unwrap();
    std::fs::write(c.join(".dockerignore"), "build\n*.log\napp/*.log\n").unwrap();
    std::fs::write(
        c.join("Containerfile"),
        r#"# a comment
FROM default
ARG GREETING=hi
ENV APP_HOME=/srv/app MSG="$GREETING there"
WORKDIR $APP_HOME
COPY app/ .
RUN echo built > built.txt && \
    mkdir -p /data && echo one > /data/one && rm /etc/passwd-never 2>/dev/null; true
RUN rm -rf /data && mkdir /data && echo two > /data/two
USER nobody
EXPOSE 8080
LABEL course=isolab
CMD ["/bin/sh", "-c", "id -u; pwd; cat hello.txt built.txt; ls /data; echo $MSG; ls"]
"#,
    )
    .unwrap();
    let ctx_s = c.to_str().unwrap();
    let build = |extra: &[&str]| {
        let mut a = vec!["build", "-t", "demo:1", "--build-arg", "GREETING=hello"];
        a.extend_from_slice(extra);
        a.push(ctx_s);
        let out = isolab().args(&a).env("ISOLAB_HOME", h).output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        stderr(&out)
    };
    let first = build(&[]);
    assert_eq!(first.matches("built  ").count(), 3, "{first}");
    // Two RUNs and a COPY: three layers on the base's two.
    let inspect: serde_json::Value =
        serde_json::from_str(&ok(h, &["image", "inspect", "demo:1"])).unwrap();
    assert_eq!(inspect["layers"].as_array().unwrap().len(), 5);
    assert_eq!(inspect["config"]["user"], "nobody");
    assert_eq!(inspect["config"]["exposed_ports"][0], "8080/tcp");
    let history: Vec<String> = inspect["config"]["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["created_by"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        history.iter().any(|h| h.starts_with("RUN rm -rf /data")),
        "{history:?}"
    );
    assert_eq!(
        inspect["config"]["history"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|h| h["empty_layer"] != true)
            .count(),
        5
    );
    // The config, the COPY (without what .dockerignore excludes), and the
    // second RUN's whiteouts: /data holds only `two`.
    assert_eq!(
        ok(h, &["run", "--image", "demo:1"]),
        "65534\n/srv/app\nhello from copy\nbuilt\ntwo\nhello there\nbuilt.txt\nhello.txt\n"
    );
    // Again: every step from the cache.
    let again = build(&[]);
    assert_eq!(again.matches("cached ").count(), 3, "{again}");
    // A changed file rebuilds its COPY and everything after it.
    std::fs::write(c.join("app/hello.txt"), "changed\n").unwrap();
    let changed = build(&[]);
    assert_eq!(changed.matches("built  ").count(), 3, "{changed}");
    let nocache = build(&["--no-cache"]);
    assert_eq!(nocache.matches("built  ").count(), 3, "{nocache}");
    // Unsupported instructions are named before any step runs.
    std::fs::write(
        c.join("Bad"),
        "FROM default\nRUN true\nHEALTHCHECK CMD true\n",
    )
    .unwrap();
    let out = isolab()
        .args([
            "build",
            "-t",
            "bad:1",
            "-f",
            c.join("Bad").to_str().unwrap(),
            ctx_s,
        ])
        .env("ISOLAB_HOME", h)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("line 3: HEALTHCHECK is not supported"),
        "{}",
        stderr(&out)
    );
    // A failing RUN says so, and its container leaves nothing.
    std::fs::write(c.join("Fails"), "FROM default\nRUN exit 3\n").unwrap();
    let out = isolab()
        .args([
            "build",
            "-t",
            "bad:2",
            "-f",
            c.join("Fails").to_str().unwrap(),
            ctx_s,
        ])
        .env("ISOLAB_HOME", h)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("exited with 3"), "{}", stderr(&out));
    assert!(
        std::fs::read_dir(h.join("build"))
            .map(|d| d.count())
            .unwrap_or(0)
            == 0
    );
    // umoci unpacks the built image (whiteouts and all) to the same tree.
    if require(
        "umoci and skopeo (apt-get install umoci skopeo)",
        have("umoci") && have("skopeo"),
    ) {
        let work = tempfile::tempdir().unwrap();
        let w = |n: &str| work.path().join(n).display().to_string();
        ok(
            h,
            &[
                "image",
                "save",
                "--format",
                "oci",
                "-o",
                &w("demo.tar"),
                "demo:1",
            ],
        );
        tool(
            "skopeo",
            &[
                "copy",
                &format!("oci-archive:{}:demo:1", w("demo.tar")),
                &format!("oci:{}:demo", w("layout")),
            ],
        );
        tool(
            "umoci",
            &[
                "unpack",
                "--image",
                &format!("{}:demo", w("layout")),
                &w("bundle"),
            ],
        );
        assert_eq!(
            isolab_tree(h, "demo:1"),
            tree_of(&work.path().join("bundle/rootfs"))
        );
        // Its history, as other tools read it.
        let out = std::process::Command::new("skopeo")
            .args(["inspect", "--config", &format!("oci:{}:demo", w("layout"))])
            .output()
            .unwrap();
        assert!(
            stdout(&out).contains("WORKDIR $APP_HOME"),
            "{}",
            stdout(&out)
        );
    }
}
