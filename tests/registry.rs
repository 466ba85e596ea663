//! Issue 15: pull and push through the OCI distribution API, against a
//! real registry (Debian's `docker-registry`, the CNCF distribution
//! registry) that the test starts on 127.0.0.1 with a temporary storage
//! directory — plain HTTP, and TLS with a CA the test makes plus htpasswd
//! logins — and against a hostile one the test serves itself.
mod common;
use common::*;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const REGISTRY: &str = "/usr/bin/docker-registry";

/// A registry process, killed with its storage when dropped.
struct Registry {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `docker-registry` with `extra` config (TLS, auth); retries on
/// another port if one was taken in between.
fn start_registry(extra: &str) -> Registry {
    for _ in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let cfg = dir.path().join("config.yml");
        std::fs::write(
            &cfg,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n{extra}",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let mut child = std::process::Command::new(REGISTRY)
            .arg("serve")
            .arg(&cfg)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Registry {
                    child,
                    port,
                    _dir: dir,
                };
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    panic!("docker-registry did not start");
}

fn cmd(home: &Path, args: &[&str], stdin: Option<&str>) -> std::process::Output {
    let mut c = isolab();
    c.args(args).env("ISOLAB_HOME", home);
    c.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut i = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        i.write_all(s.as_bytes()).unwrap();
    }
    drop(i);
    child.wait_with_output().unwrap()
}

fn ok(home: &Path, args: &[&str]) -> std::process::Output {
    let o = cmd(home, args, None);
    assert!(
        o.status.success(),
        "isolab {args:?}: {}{}",
        stdout(&o),
        stderr(&o)
    );
    o
}

fn skopeo(args: &[&str]) {
    let o = std::process::Command::new("skopeo")
        .args(args)
        .output()
        .unwrap();
    assert!(o.status.success(), "skopeo {args:?}: {}", stderr(&o));
}

fn have_tools() -> bool {
    require("root (containers)", is_root())
        && require(
            "docker-registry (apt-get install docker-registry)",
            Path::new(REGISTRY).is_file(),
        )
        && require(
            "skopeo (apt-get install skopeo)",
            std::process::Command::new("skopeo")
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success()),
        )
}

#[test]
fn push_and_pull_through_a_real_registry_and_with_skopeo() {
    if !have_tools() {
        return;
    }
    let reg = start_registry("");
    let at = format!("127.0.0.1:{}", reg.port);
    let (a, b) = (home(), home());
    let work = tempfile::tempdir().unwrap();
    ok(a.path(), &["image", "build"]);
    let r = format!("{at}/lab/default:1");
    let o = ok(a.path(), &["push", "default", &r, "--insecure"]);
    assert!(stdout(&o).contains("pushed default"), "{}", stdout(&o));
    // Pushed again: every blob is already there.
    let o = ok(a.path(), &["push", "default", &r, "--insecure"]);
    assert_eq!(
        stderr(&o).matches("already there").count(),
        2,
        "{}",
        stderr(&o)
    );

    // To another repository of the same registry: every layer is mounted
    // from the first, not uploaded again.
    let o = ok(
        a.path(),
        &["push", "default", &format!("{at}/lab/copy:1"), "--insecure"],
    );
    assert_eq!(
        stderr(&o)
            .matches("mounted from another repository")
            .count(),
        2,
        "{}",
        stderr(&o)
    );
    // In small chunks (PATCH with Content-Range), as a big layer goes.
    let mut c = isolab();
    c.args([
        "push",
        "default",
        &format!("{at}/lab/chunked:1"),
        "--insecure",
    ])
    .env("ISOLAB_HOME", a.path())
    .env("ISOLAB_UPLOAD_CHUNK", "65536");
    std::fs::remove_file(a.path().join("blob-origins.json")).unwrap();
    let o = c.output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let fresh = home();
    ok(
        fresh.path(),
        &["pull", &format!("{at}/lab/chunked:1"), "--insecure"],
    );
    let o = ok(
        fresh.path(),
        &[
            "run",
            "--image",
            &format!("{at}/lab/chunked:1"),
            "--",
            "/bin/echo",
            "chunked",
        ],
    );
    assert_eq!(stdout(&o), "chunked\n");

    // Another home pulls it and runs it.
    let o = ok(b.path(), &["pull", &r, "--insecure"]);
    assert!(
        stdout(&o).contains(&format!("pulled {r}")),
        "{}",
        stdout(&o)
    );
    let o = ok(
        b.path(),
        &["run", "--image", &r, "--", "/bin/echo", "pulled"],
    );
    assert_eq!(stdout(&o), "pulled\n");
    // Pulled again: nothing is fetched.
    let o = ok(b.path(), &["pull", &r, "--insecure"]);
    assert_eq!(
        stderr(&o).matches("already there").count(),
        2,
        "{}",
        stderr(&o)
    );

    // skopeo pulls what isolab pushed, and isolab loads it back.
    let dir = work.path().join("layout");
    skopeo(&[
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{r}"),
        &format!("oci:{}:x", dir.display()),
    ]);
    ok(
        b.path(),
        &[
            "image",
            "load",
            "-i",
            dir.to_str().unwrap(),
            "--tag",
            "via-skopeo:1",
        ],
    );
    // isolab pulls what skopeo pushed.
    let archive = work.path().join("a.tar");
    ok(
        a.path(),
        &[
            "image",
            "save",
            "--format",
            "oci",
            "-o",
            archive.to_str().unwrap(),
            "default",
        ],
    );
    let r2 = format!("{at}/other/pushed-by-skopeo:2");
    skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        &format!("oci-archive:{}:default", archive.display()),
        &format!("docker://{r2}"),
    ]);
    let c = home();
    ok(c.path(), &["pull", &r2, "--insecure"]);
    let o = ok(
        c.path(),
        &["run", "--image", &r2, "--", "/bin/echo", "from skopeo"],
    );
    assert_eq!(stdout(&o), "from skopeo\n");

    // Bad references and unreachable registries: one sentence each.
    for (args, says) in [
        (vec!["pull", "alpine"], "name the registry"),
        (
            vec!["pull", &format!("{at}/lab/nope:1"), "--insecure"],
            "not found",
        ),
        (vec!["pull", &r], "--insecure"),
    ] {
        let o = cmd(c.path(), &args, None);
        assert!(!o.status.success());
        let e = stderr(&o);
        assert!(e.contains(says), "{args:?}: {e}");
        assert_eq!(e.trim().lines().count(), 1, "{e}");
    }
}

/// A CA and a server certificate for 127.0.0.1, made with openssl.
fn make_certs(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let run = |args: &[&str]| {
        let o = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(o.status.success(), "openssl {args:?}: {}", stderr(&o));
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=isolab test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    (
        dir.join("ca.crt"),
        dir.join("server.crt"),
        dir.join("server.key"),
    )
}

#[test]
fn tls_with_a_private_ca_and_logins() {
    if !have_tools() || !require("openssl", Path::new("/usr/bin/openssl").is_file()) {
        return;
    }
    let certs = tempfile::tempdir().unwrap();
    let (ca, crt, key) = make_certs(certs.path());
    let htpasswd = certs.path().join("htpasswd");
    std::fs::write(
        &htpasswd,
        format!("student:{}\n", bcrypt::hash("s3cret", 5).unwrap()),
    )
    .unwrap();
    let reg = start_registry(&format!(
        "  tls:\n    certificate: {}\n    key: {}\nauth:\n  htpasswd:\n    realm: isolab-test\n    path: {}\n",
        crt.display(),
        key.display(),
        htpasswd.display()
    ));
    let at = format!("127.0.0.1:{}", reg.port);
    let ca = ca.to_str().unwrap();
    let h = home();
    ok(h.path(), &["image", "build"]);
    let r = format!("{at}/course/default:tls");
    // No login yet: refused, and told how to log in.
    let o = cmd(h.path(), &["push", "default", &r, "--tls-ca", ca], None);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("isolab login"), "{}", stderr(&o));
    // A wrong password is refused and stores nothing.
    let o = cmd(
        h.path(),
        &[
            "login",
            &at,
            "-u",
            "student",
            "--password-stdin",
            "--tls-ca",
            ca,
        ],
        Some("wrong\n"),
    );
    assert!(!o.status.success(), "{}", stdout(&o));
    assert!(!h.path().join("auth.json").exists());
    // The right one is kept, readable by root only.
    let o = cmd(
        h.path(),
        &[
            "login",
            &at,
            "-u",
            "student",
            "--password-stdin",
            "--tls-ca",
            ca,
        ],
        Some("s3cret\n"),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let mode = std::fs::metadata(h.path().join("auth.json"))
        .unwrap()
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );
    ok(h.path(), &["push", "default", &r, "--tls-ca", ca]);
    // Without the CA the certificate is not trusted: said so.
    let o = cmd(h.path(), &["pull", &r], None);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--tls-ca"), "{}", stderr(&o));
    // skopeo, with the same CA and login, reads what isolab pushed.
    let certdir = tempfile::tempdir().unwrap();
    std::fs::copy(ca, certdir.path().join("ca.crt")).unwrap();
    let out = tempfile::tempdir().unwrap();
    skopeo(&[
        "copy",
        "--src-cert-dir",
        certdir.path().to_str().unwrap(),
        "--src-creds",
        "student:s3cret",
        &format!("docker://{r}"),
        &format!("oci:{}:x", out.path().join("l").display()),
    ]);
    // A fresh pull into the same home after logout is refused again.
    ok(h.path(), &["logout", &at]);
    let o = cmd(h.path(), &["pull", &r, "--tls-ca", ca], None);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("isolab login"), "{}", stderr(&o));
}

/// (path, content type, body) a fake registry answers with.
type Route = (String, String, Vec<u8>);

/// A registry that serves whatever `routes` says, for the hostile cases.
fn serve(routes: Vec<Route>) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let mut buf = [0u8; 8192];
            let n = s.read(&mut buf).unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]).into_owned();
            let path = req.split_whitespace().nth(1).unwrap_or("").to_owned();
            let head = req.starts_with("HEAD");
            let hit = routes.iter().find(|(p, _, _)| *p == path);
            let (status, ctype, body) = match hit {
                Some((_, t, b)) => ("200 OK", t.clone(), b.clone()),
                None => ("404 Not Found", "text/plain".into(), b"no".to_vec()),
            };
            let _ = write!(
                s,
                "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            if !head {
                let _ = s.write_all(&body);
            }
        }
    });
    port
}

#[test]
fn a_hostile_registry_is_refused_and_leaves_nothing() {
    use sha2::Digest;
    let hex = |b: &[u8]| format!("{:x}", sha2::Sha256::digest(b));
    let layer = {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_size(3);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, "f", &b"abc"[..]).unwrap();
        b.into_inner().unwrap()
    };
    let config = serde_json::to_vec(&serde_json::json!({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", hex(&layer))]}})).unwrap();
    let manifest = |layer_digest: &str, size: usize| {
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{}", hex(&config)), "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": size}],
        }))
        .unwrap()
    };
    let mt = "application/vnd.oci.image.manifest.v1+json".to_string();
    let good = format!("sha256:{}", hex(&layer));
    let mut tampered = layer.clone();
    tampered[600] ^= 1;
    let cases: Vec<(&str, Vec<Route>, &str)> = vec![
        (
            "a layer whose bytes do not match its digest",
            vec![
                (
                    "/v2/x/manifests/1".into(),
                    mt.clone(),
                    manifest(&good, layer.len()),
                ),
                (
                    format!("/v2/x/blobs/sha256:{}", hex(&config)),
                    "application/octet-stream".into(),
                    config.clone(),
                ),
                (
                    format!("/v2/x/blobs/{good}"),
                    "application/octet-stream".into(),
                    tampered,
                ),
            ],
            "does not match its digest",
        ),
        (
            "a layer larger than its descriptor",
            vec![
                ("/v2/x/manifests/1".into(), mt.clone(), manifest(&good, 100)),
                (
                    format!("/v2/x/blobs/sha256:{}", hex(&config)),
                    "application/octet-stream".into(),
                    config.clone(),
                ),
                (
                    format!("/v2/x/blobs/{good}"),
                    "application/octet-stream".into(),
                    layer.clone(),
                ),
            ],
            "larger than its descriptor",
        ),
        (
            "a descriptor that is not a sha256 digest",
            vec![(
                "/v2/x/manifests/1".into(),
                mt.clone(),
                manifest("sha256:../../../etc", 3),
            )],
            "is not sha256:<64 lowercase hex digits>",
        ),
        (
            "a config whose bytes do not match",
            vec![
                (
                    "/v2/x/manifests/1".into(),
                    mt.clone(),
                    manifest(&good, layer.len()),
                ),
                (
                    format!("/v2/x/blobs/sha256:{}", hex(&config)),
                    "application/octet-stream".into(),
                    b"{}".to_vec(),
                ),
            ],
            "does not match its digest",
        ),
        (
            "a layer claiming more than a layer may hold",
            vec![(
                "/v2/x/manifests/1".into(),
                mt.clone(),
                manifest(&good, 1 << 40),
            )],
            "more than the",
        ),
        (
            "a huge manifest",
            vec![("/v2/x/manifests/1".into(), mt.clone(), vec![b' '; 5 << 20])],
            "larger than",
        ),
    ];
    for (what, routes, says) in cases {
        let port = serve(routes);
        let h = home();
        let o = cmd(
            h.path(),
            &["pull", &format!("127.0.0.1:{port}/x:1"), "--insecure"],
            None,
        );
        assert!(!o.status.success(), "{what}");
        let e = stderr(&o);
        assert!(e.contains(says), "{what}: {e}");
        // One sentence (progress lines aside).
        assert_eq!(
            e.lines().filter(|l| l.starts_with("isolab:")).count(),
            1,
            "{what}: {e}"
        );
        let left: Vec<_> = ["images", "layers", "blobs"]
            .iter()
            .flat_map(|d| {
                std::fs::read_dir(h.path().join(d))
                    .into_iter()
                    .flatten()
                    .flatten()
            })
            .map(|e| e.path())
            .collect();
        assert!(left.is_empty(), "{what} left {left:?}");
        let tmp: Vec<_> = std::fs::read_dir(h.path())
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp"))
            .collect();
        assert!(tmp.is_empty(), "{what} left temporary files");
    }
}

/// A registry that drops the connection in the middle of one chunk: the
/// push asks how far the upload got (GET on the upload URL, `Range`) and
/// goes on from there; the registry checks every blob's digest at the
/// end, so a resume that skipped or repeated a byte would fail.
#[test]
fn a_push_resumes_an_upload_the_registry_dropped() {
    use sha2::Digest;
    use std::collections::HashMap;
    use std::io::BufRead;
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let stats = std::sync::Arc::new(std::sync::Mutex::new((0u32, 0u32, 0u32)));
    let st = stats.clone();
    std::thread::spawn(move || {
        let mut uploads: HashMap<String, Vec<u8>> = HashMap::new();
        let mut next = 0;
        let mut patches = 0;
        for s in l.incoming() {
            let Ok(s) = s else { continue };
            let mut r = std::io::BufReader::new(s.try_clone().unwrap());
            let mut w = s;
            let mut line = String::new();
            if r.read_line(&mut line).is_err() {
                continue;
            }
            let mut parts = line.split_whitespace();
            let (method, path) = (
                parts.next().unwrap_or("").to_owned(),
                parts.next().unwrap_or("").to_owned(),
            );
            let mut len = 0usize;
            loop {
                let mut h = String::new();
                r.read_line(&mut h).unwrap();
                if h.trim().is_empty() {
                    break;
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let reply = |w: &mut std::net::TcpStream, status: &str, headers: &str| {
                let _ = write!(
                    w,
                    "HTTP/1.1 {status}\r\n{headers}Content-Length: 0\r\nConnection: close\r\n\r\n"
                );
            };
            let id = path.split('?').next().unwrap_or("").to_owned();
            match method.as_str() {
                "HEAD" => reply(&mut w, "404 Not Found", ""),
                "POST" => {
                    next += 1;
                    let u = format!("/up/{next}");
                    uploads.insert(u.clone(), Vec::new());
                    reply(&mut w, "202 Accepted", &format!("Location: {u}\r\n"));
                }
                "PATCH" => {
                    patches += 1;
                    let mut body = vec![0u8; len];
                    if patches == 2 {
                        // Take half the chunk, then drop the connection.
                        r.read_exact(&mut body[..len / 2]).unwrap();
                        uploads
                            .get_mut(&id)
                            .unwrap()
                            .extend_from_slice(&body[..len / 2]);
                        st.lock().unwrap().0 += 1;
                        continue;
                    }
                    r.read_exact(&mut body).unwrap();
                    let u = uploads.get_mut(&id).unwrap();
                    u.extend_from_slice(&body);
                    let end = u.len() - 1;
                    reply(
                        &mut w,
                        "202 Accepted",
                        &format!("Location: {id}\r\nRange: 0-{end}\r\n"),
                    );
                }
                "GET" => {
                    st.lock().unwrap().1 += 1;
                    let got = uploads.get(&id).map_or(0, Vec::len);
                    reply(
                        &mut w,
                        "204 No Content",
                        &format!("Location: {id}\r\nRange: 0-{}\r\n", got.saturating_sub(1)),
                    );
                }
                "PUT" if id.starts_with("/up/") => {
                    let want = path.split("digest=sha256:").nth(1).unwrap_or("").to_owned();
                    let got = format!("{:x}", sha2::Sha256::digest(&uploads[&id]));
                    if got == want {
                        st.lock().unwrap().2 += 1;
                        reply(&mut w, "201 Created", "");
                    } else {
                        reply(&mut w, "400 Bad Request", "");
                    }
                }
                "PUT" => {
                    let mut body = vec![0u8; len];
                    let _ = r.read_exact(&mut body);
                    reply(&mut w, "201 Created", "");
                }
                _ => reply(&mut w, "405 Method Not Allowed", ""),
            }
        }
    });
    let h = home();
    ok(h.path(), &["image", "build"]);
    let mut c = isolab();
    c.args([
        "push",
        "default",
        &format!("127.0.0.1:{port}/x:1"),
        "--insecure",
    ])
    .env("ISOLAB_HOME", h.path())
    .env("ISOLAB_UPLOAD_CHUNK", "65536");
    let o = c.output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let (dropped, asked, committed) = *stats.lock().unwrap();
    assert_eq!(
        (dropped, asked),
        (1, 1),
        "one dropped chunk, one status request"
    );
    assert_eq!(
        committed, 3,
        "two layers and the config, each with its digest checked"
    );
}

/// A registry whose token service is plain HTTP on another host does not
/// get the stored password: refused in one sentence, before any request
/// goes there.
#[test]
fn credentials_never_go_in_clear_to_another_host() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = write!(
                s,
                "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"http://token.example/auth\",service=\"x\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    });
    let h = home();
    std::fs::write(
        h.path().join("auth.json"),
        format!("{{\"127.0.0.1:{port}\": [\"student\", \"s3cret\"]}}"),
    )
    .unwrap();
    let o = cmd(
        h.path(),
        &["pull", &format!("127.0.0.1:{port}/x:1"), "--insecure"],
        None,
    );
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("sent in clear") && e.contains("refused"), "{e}");
}
