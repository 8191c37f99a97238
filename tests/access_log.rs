//! Request ids and access logs.

mod support;

use support::*;

fn log_toml(origin: &Origin, path: &std::path::Path, format: &str) -> String {
    format!(
        "[[listeners]]\nlisten = \"127.0.0.1:0\"\naccess_log = {{ path = \"{}\", format = \"{format}\" }}\nroutes = [{{ host = \"app.test\", pool = \"main\" }}]\n[pools.main]\nbackends = [\"{}\"]\n",
        path.display(),
        origin.addr
    )
}

fn temp_log(name: &str, origin: &Origin) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!(
        "steelyard-{name}-{}-{}.log",
        std::process::id(),
        origin.addr.port()
    ));
    let _ = std::fs::remove_file(&path);
    path
}

#[tokio::test]
async fn request_ids_are_kept_or_made_and_sent_upstream() {
    let origin = spawn_origin("a").await;
    let sy = spawn_steelyard(config(&one_pool_toml(&[origin.addr], ""))).await;
    let client = client();
    client
        .get(sy.url("/"))
        .header("x-request-id", "client-chosen-1")
        .send()
        .await
        .expect("request");
    assert_eq!(origin.last_headers()["x-request-id"], "client-chosen-1");
    client.get(sy.url("/")).send().await.expect("request");
    let made = origin.last_headers()["x-request-id"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert_eq!(made.len(), 16);
    assert!(made.bytes().all(|b| b.is_ascii_hexdigit()), "{made}");
}

#[tokio::test]
async fn json_access_log_has_one_line_per_request_with_its_fields() {
    let origin = spawn_origin("a").await;
    let path = temp_log("json", &origin);
    let sy = spawn_steelyard(config(&log_toml(&origin, &path, "json"))).await;
    let client = client();
    let res = client
        .get(sy.url("/download?bytes=1000"))
        .header("host", "app.test")
        .send()
        .await
        .expect("request");
    assert_eq!(res.bytes().await.expect("body").len(), 1000);
    let id = origin.last_headers()["x-request-id"]
        .to_str()
        .expect("ascii")
        .to_owned();
    let res = client
        .get(sy.url("/nowhere"))
        .header("host", "other.test")
        .send()
        .await
        .expect("request");
    assert_eq!(res.status(), 404);
    res.bytes().await.expect("body");

    let lines = log_lines(&path, 2).await;
    let first: serde_json::Value = serde_json::from_str(&lines[0]).expect("json line");
    assert_eq!(first["method"], "GET");
    assert_eq!(first["path"], "/download?bytes=1000");
    assert_eq!(first["host"], "app.test");
    assert_eq!(first["status"], 200);
    assert_eq!(first["bytes"], 1000);
    assert_eq!(first["upstream"], origin.addr.to_string());
    assert_eq!(first["pool"], "main");
    assert_eq!(first["retries"], 0);
    assert_eq!(first["client"], "127.0.0.1");
    assert_eq!(first["request_id"], id.as_str());
    assert!(
        first["duration_ms"].as_f64().expect("duration") >= first["upstream_duration_ms"].as_f64().expect("upstream")
    );
    let second: serde_json::Value = serde_json::from_str(&lines[1]).expect("json line");
    assert_eq!(second["status"], 404);
    assert_eq!(second["upstream"], serde_json::Value::Null);
    assert_eq!(second["bytes"], "404 Not Found\n".len());
}

#[tokio::test]
async fn combined_access_log_reads_like_nginx() {
    let origin = spawn_origin("a").await;
    let path = temp_log("combined", &origin);
    let sy = spawn_steelyard(config(&log_toml(&origin, &path, "combined"))).await;
    client()
        .get(sy.url("/x?y=1"))
        .header("host", "app.test")
        .header("user-agent", "tester/1.0")
        .send()
        .await
        .expect("request");
    let line = log_lines(&path, 1).await.remove(0);
    assert!(line.starts_with("127.0.0.1 - - ["), "{line}");
    assert!(
        line.contains("] \"GET /x?y=1 HTTP/1.1\" 200 1 \"-\" \"tester/1.0\" "),
        "{line}"
    );
    assert!(line.contains(&format!(" {} main ", origin.addr)), "{line}");
}

/// logrotate's way: move the file away, send SIGUSR1; the lines after the signal go to a new
/// file at the configured path, none are lost, and the moved file gets no more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_reopens_the_log_after_it_was_moved() {
    let origin = spawn_origin("a").await;
    let path = temp_log("rotate", &origin);
    let rotated = path.with_extension("log.1");
    let _ = std::fs::remove_file(&rotated);
    let file = path.with_extension("toml");
    std::fs::write(&file, log_toml(&origin, &path, "combined")).expect("config");
    let mut p = Process::start(&["-c", file.to_str().expect("utf-8")]);
    let addr = p.listening_addr();
    let client = client();
    let send = |n: usize| {
        let client = client.clone();
        async move {
            for i in 0..n {
                let res = client
                    .get(format!("http://{addr}/r{i}"))
                    .header("host", "app.test")
                    .send()
                    .await
                    .expect("request");
                assert_eq!(res.status(), 200);
            }
        }
    };
    send(3).await;
    assert_eq!(log_lines(&path, 3).await.len(), 3);
    std::fs::rename(&path, &rotated).expect("rotate");
    p.signal("-USR1");
    p.wait_for_line("access log reopened");
    send(2).await;
    assert_eq!(log_lines(&path, 2).await.len(), 2, "new lines go to the new file");
    assert_eq!(
        std::fs::read_to_string(&rotated).expect("rotated").lines().count(),
        3,
        "the moved file keeps its lines and gets no more"
    );
    p.signal("-TERM");
    p.wait();
}
