//! A remote token through p11-kit: `p11-kit server` exports a SoftHSM2 token on a unix socket
//! (as an investigator's laptop exports its smartcard, the socket forwarded over SSH), and every
//! operation runs through `p11-kit-client.so` in a process that cannot see SoftHSM2 itself:
//! list, show, test (decrypt + sign), generate, cert signing, the fixture export's verify and
//! extract, and a FUSE mount. Also `p11-kit-proxy.so` as a module and `module-name=` resolved
//! through p11-kit's module registry.

use crate::common;
use crate::common::mount as mount_support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{fixture, key_generate_args, run_cli, stderr, stdout, SoftHsm};
use serde_json::Value;

/// The fixture organisation's root verify key (published with the fixture export).
const FIXTURE_ROOT_KEY: &str = "c118b50c90876d8feac2ffe02d59c26f447064289091c1993d3aec170fd6a9c2";
const SERVICE1: &str = "sequester_service_1.00000000000000000000000000000001.private.pem";
const EXPORT_SHA256: &str = "db1cd159724b448569b9697f7a4ab21d6b770da78bb78dcaaf340d452c528ecf";

/// p11-kit's module directory (Debian multiarch), as the library resolves relative modules.
fn p11kit_dir() -> PathBuf {
    sequester_custody::token::pkcs11::registry::module_directories()[0].clone()
}

fn client_module() -> PathBuf {
    p11kit_dir().join("p11-kit-client.so")
}

fn proxy_module() -> PathBuf {
    p11kit_dir().parent().unwrap().join("p11-kit-proxy.so")
}

fn p11kit_available() -> bool {
    let ok = client_module().is_file()
        && proxy_module().exists()
        && Command::new("p11-kit")
            .arg("--help")
            .output()
            .is_ok_and(|o| o.status.success());
    common::available(
        "p11-kit server and its client module (apt packages p11-kit, p11-kit-modules)",
        ok,
    )
}

/// `p11-kit server` in the foreground on `socket`, exporting the token `label` of `hsm`.
/// Killed on drop.
struct Server {
    child: Child,
    address: String,
}

impl Server {
    fn start(hsm: &SoftHsm, socket: &Path) -> Server {
        let mut child = Command::new("p11-kit")
            .args(["server", "-f", "--provider"])
            .arg(&hsm.module)
            .arg("-n")
            .arg(socket)
            .arg(format!("pkcs11:token={}", hsm.label))
            // The server process (and the child it forks per connection) loads SoftHSM2, so
            // the token directory is its business: the client never sees SOFTHSM2_CONF.
            .env("SOFTHSM2_CONF", &hsm.conf)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("p11-kit server");
        // It prints `P11_KIT_SERVER_ADDRESS=unix:path=…; export P11_KIT_SERVER_ADDRESS;`.
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let address = line
            .split(';')
            .next()
            .and_then(|s| s.trim().strip_prefix("P11_KIT_SERVER_ADDRESS="))
            .unwrap_or_else(|| panic!("p11-kit server printed `{line}`"))
            .to_string();
        assert_eq!(address, format!("unix:path={}", socket.display()));
        let start = Instant::now();
        while !socket.exists() && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(socket.exists(), "no socket at {}", socket.display());
        Server { child, address }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Remote {
    hsm: SoftHsm,
    _server: Server,
    work: tempfile::TempDir,
    env: Vec<(String, String)>,
}

impl Remote {
    fn new(label: &str) -> Option<Remote> {
        if !p11kit_available() {
            return None;
        }
        let hsm = SoftHsm::new(label)?;
        hsm.import_service_key_with_tool(&fixture(SERVICE1), "svc1");
        let work = tempfile::tempdir().unwrap();
        let server = Server::start(&hsm, &work.path().join("p11-kit.sock"));
        let env = vec![
            ("P11_KIT_SERVER_ADDRESS".into(), server.address.clone()),
            // Points nowhere: the client must reach the token through the server only.
            (
                "SOFTHSM2_CONF".into(),
                work.path().join("absent.conf").display().to_string(),
            ),
            // p11-kit's user registry, for the module-name= tests.
            (
                "XDG_CONFIG_HOME".into(),
                work.path().join("config").display().to_string(),
            ),
            ("SEQUESTER_CUSTODY_PIN".into(), common::USER_PIN.into()),
            (
                "SEQUESTER_CUSTODY_TRANSCRIPT".into(),
                work.path().join("transcript.jsonl").display().to_string(),
            ),
        ];
        Some(Remote {
            hsm,
            _server: server,
            work,
            env,
        })
    }

    fn key(&self, object: &str) -> String {
        format!(
            "pkcs11:token={};object={object};type=private?module-path={}",
            self.hsm.label,
            client_module().display()
        )
    }

    fn token(&self) -> String {
        format!(
            "pkcs11:token={}?module-path={}",
            self.hsm.label,
            client_module().display()
        )
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = run_cli(args, &self.env);
        assert!(
            out.status.success(),
            "{args:?}:\n{}{}",
            stdout(&out),
            stderr(&out)
        );
        stdout(&out)
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut full = vec!["--json"];
        full.extend_from_slice(args);
        serde_json::from_str(&self.ok(&full)).unwrap()
    }
}

#[test]
fn every_operation_through_p11_kit_client() {
    let Some(r) = Remote::new("p11kit-remote") else {
        return;
    };
    let client = client_module();
    let client = client.to_str().unwrap();

    // list: the modules listing shows the exported token through the client.
    let out = r.ok(&["token", "list", "--module", client]);
    assert!(out.contains("p11kit-remote"), "{out}");
    let keys = r.json(&["key", "list", "--token", &r.token()]);
    assert!(keys.to_string().contains("svc1"), "{keys}");

    // show
    let shown = r.json(&["key", "show", &r.key("svc1")]);
    assert_eq!(shown["bits"], 1024, "{shown}");

    // test: the service key's decrypt round trip (the raw C_Decrypt path on SoftHSM2, which
    // failed with CKR_CRYPTOKI_NOT_INITIALIZED when taken from a second function list).
    let out = r.ok(&["-v", "key", "test", &r.key("svc1"), "--rounds", "2"]);
    assert!(
        out.to_lowercase().contains("ok") || out.contains("pass"),
        "{out}"
    );

    // generate on the remote token, then sign a service certificate through it.
    let auth_pub = r.work.path().join("authority.pub.pem");
    r.ok(&key_generate_args(
        "authority",
        "remote-authority",
        "2048",
        &r.token(),
        &[
            "--public-out",
            auth_pub.to_str().unwrap(),
            "--operator",
            "Alice",
        ],
    ));
    r.ok(&["key", "test", &r.key("remote-authority"), "--rounds", "1"]);
    r.ok(&key_generate_args(
        "service",
        "remote-service",
        "2048",
        &r.token(),
        &["--operator", "Alice"],
    ));
    r.ok(&["key", "test", &r.key("remote-service"), "--rounds", "1"]);
    let certs = r.work.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    r.ok(&[
        "cert",
        "service",
        "--authority",
        &r.key("remote-authority"),
        "--authority-public",
        auth_pub.to_str().unwrap(),
        "--service-key",
        &r.key("remote-service"),
        "--label",
        "Remote Service",
        "-o",
        certs.to_str().unwrap(),
        "--operator",
        "Alice",
    ]);
    let cert = std::fs::read_dir(&certs)
        .unwrap()
        .next()
        .expect("a certificate")
        .unwrap()
        .path();
    let out = r.ok(&[
        "cert",
        "show",
        cert.to_str().unwrap(),
        "--authority-public",
        auth_pub.to_str().unwrap(),
    ]);
    assert!(out.contains("Remote Service"), "{out}");

    // decrypt: the real Parsec fixture export, verified and extracted through the client.
    let export = fixture("sequestered_export.sqlite");
    let export = export.to_str().unwrap();
    let v = r.json(&[
        "export",
        "verify",
        export,
        "--key",
        &r.key("svc1"),
        "--root-key",
        FIXTURE_ROOT_KEY,
    ]);
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["report"]["readable_versions"], 4, "{v}");
    let dest = r.work.path().join("extracted");
    r.ok(&[
        "export",
        "extract",
        export,
        dest.to_str().unwrap(),
        "--key",
        &r.key("svc1"),
        "--at",
        "2000-01-15T00:00:00Z",
    ]);
    assert_eq!(std::fs::read(dest.join("bar2.txt")).unwrap(), b"Hello v2");

    // mount
    if cfg!(feature = "mount") && mount_support::fuse_available() {
        let mnt = r.work.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let m = mount_support::Mount::start(
            Path::new(export),
            &mnt,
            &r.key("svc1"),
            &["--at", "2000-01-15T00:00:00Z"],
            &r.env,
        );
        assert_eq!(std::fs::read(mnt.join("bar2.txt")).unwrap(), b"Hello v2");
        let (status, err) = m.stop(libc::SIGINT);
        assert!(status.success(), "{err}");
    }
    assert_eq!(common::file_sha256(Path::new(export)), EXPORT_SHA256);
}

#[test]
fn module_name_resolves_through_p11_kits_registry() {
    let Some(r) = Remote::new("p11kit-registry") else {
        return;
    };
    // Not registered anywhere yet, and no profile of that name.
    let uri = |name: &str| {
        format!(
            "pkcs11:token={};object=svc1;type=private?module-name={name}",
            r.hsm.label
        )
    };
    let out = run_cli(&["key", "show", &uri("investigator-laptop")], &r.env);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(
            "no HSM profile named `investigator-laptop`, and no p11-kit module of that name"
        ),
        "{}",
        stderr(&out)
    );
    // Registered in the user's p11-kit config, by a relative library name as p11-kit allows.
    let modules = r.work.path().join("config/pkcs11/modules");
    std::fs::create_dir_all(&modules).unwrap();
    std::fs::write(
        modules.join("investigator-laptop.module"),
        "# the laptop's smartcard, forwarded over SSH\nmodule: p11-kit-client.so\n",
    )
    .unwrap();
    let shown = r.json(&["key", "show", &uri("investigator-laptop")]);
    assert_eq!(shown["bits"], 1024, "{shown}");
    r.ok(&["key", "test", &uri("investigator-laptop"), "--rounds", "1"]);
    // RFC 7512's library name without path and extension.
    r.ok(&["key", "test", &uri("p11-kit-client"), "--rounds", "1"]);
    // A registered module whose library is gone is named as such.
    std::fs::write(
        modules.join("stale.module"),
        "module: /nonexistent/gone.so\n",
    )
    .unwrap();
    let out = run_cli(&["key", "show", &uri("stale")], &r.env);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("/nonexistent/gone.so, which does not exist"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn p11_kit_proxy_is_a_module() {
    if !p11kit_available() {
        return;
    }
    // The proxy loads every registered module, among them SoftHSM2 (its package registers it),
    // which reads this token directory.
    let Some(hsm) = SoftHsm::new("p11kit-proxy") else {
        return;
    };
    hsm.import_service_key_with_tool(&fixture(SERVICE1), "svc1");
    let config = tempfile::tempdir().unwrap();
    // The user's p11-kit config narrows what the proxy loads, as p11-kit users do: OpenSC's
    // module can block in C_Initialize while another program holds a card, and the trust store
    // holds no keys. `disable-in` names the programs that must not load a module.
    let modules = config.path().join("pkcs11/modules");
    std::fs::create_dir_all(&modules).unwrap();
    for name in ["opensc-pkcs11", "p11-kit-trust"] {
        std::fs::write(
            modules.join(format!("{name}.module")),
            "disable-in: sequester-custody\n",
        )
        .unwrap();
    }
    let mut env = hsm.env();
    env.push((
        "XDG_CONFIG_HOME".into(),
        config.path().display().to_string(),
    ));
    let key = format!(
        "pkcs11:token=p11kit-proxy;object=svc1;type=private?module-path={}",
        proxy_module().display()
    );
    let out = run_cli(&["key", "test", &key, "--rounds", "2"], &env);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let export = fixture("sequestered_export.sqlite");
    let out = run_cli(
        &[
            "--json",
            "export",
            "verify",
            export.to_str().unwrap(),
            "--key",
            &key,
            "--root-key",
            FIXTURE_ROOT_KEY,
        ],
        &env,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], true, "{v}");
}
