//! Headless Chromium over WebDriver for the UI's browser tests.
//!
//! The tests need `chromedriver` and Chromium (Debian: `chromium` and
//! `chromium-driver`; `STRAND_CHROMEDRIVER` points at another driver), and
//! fail without them. A failing test saves a screenshot under
//! `$TMPDIR/strand-ui/`.

use std::future::Future;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::ClientBuilder;
pub use fantoccini::{Client, Locator, actions};
use serde_json::{Value, json};

/// How long the browser may take to show what a step expects.
const STEP_TIMEOUT: Duration = Duration::from_secs(20);

/// Runs `steps` in a fresh headless Chromium session. A step that fails
/// panics with its message, the page's URL and a screenshot named after
/// `name`.
pub async fn in_browser<F, Fut>(name: &str, steps: F)
where
    F: FnOnce(Client) -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let driver = ChromeDriver::start();
    let client = driver.browser().await;
    let outcome = steps(client.clone()).await;
    if let Err(failure) = outcome {
        let shot = screenshot_dir().join(format!("{name}-failure.png"));
        let saved = match client.screenshot().await {
            Ok(png) => std::fs::write(&shot, png)
                .map(|_| format!("screenshot: {}", shot.display()))
                .unwrap_or_else(|e| format!("screenshot not saved: {e}")),
            Err(e) => format!("no screenshot: {e}"),
        };
        let url = client.current_url().await.map(|u| u.to_string());
        let _ = client.close().await;
        panic!("{failure}\nat {url:?}\n{saved}");
    }
    client.close().await.unwrap();
}

/// Where screenshots go, made on first use.
fn screenshot_dir() -> PathBuf {
    let dir = std::env::temp_dir().join("strand-ui");
    let _ = std::fs::create_dir_all(&dir);
    dir
}

/// A chromedriver child process on a free port; killed when dropped.
struct ChromeDriver {
    child: Child,
    url: String,
}

impl ChromeDriver {
    /// Starts chromedriver (`STRAND_CHROMEDRIVER`, else the one on `PATH`);
    /// fails without it.
    fn start() -> ChromeDriver {
        let binary = match std::env::var_os("STRAND_CHROMEDRIVER") {
            Some(path) => PathBuf::from(path),
            None => crate::require_tool(
                "chromedriver",
                "install Debian's `chromium` and `chromium-driver` \
                 (or set STRAND_CHROMEDRIVER to a chromedriver)",
            ),
        };
        let port = crate::free_port().port();
        let child = Command::new(&binary)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{} does not start: {e}", binary.display()));
        let driver = ChromeDriver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let address = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(address).is_err() {
            assert!(
                Instant::now() < deadline,
                "chromedriver did not listen within 30s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        driver
    }

    async fn browser(&self) -> Client {
        let mut options = json!({
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1400,900"],
        });
        if Path::new("/usr/bin/chromium").exists() {
            options["binary"] = json!("/usr/bin/chromium");
        }
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("goog:chromeOptions".into(), options);
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&self.url)
            .await
            .expect("a headless Chromium session")
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `script` until `check` accepts its value or the step times out.
pub async fn wait_for(
    client: &Client,
    what: &str,
    script: &str,
    check: impl Fn(&Value) -> bool,
) -> Result<Value, String> {
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        let value = client
            .execute(script, vec![])
            .await
            .map_err(|e| format!("{what}: script failed: {e}"))?;
        if check(&value) {
            return Ok(value);
        }
        if Instant::now() > deadline {
            return Err(format!("{what}: timed out; last saw {value}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// With `STRAND_UI_SCREENSHOTS` set, saves a screenshot of each view under
/// `$TMPDIR/strand-ui/`, to look at the UI without a browser of one's own.
pub async fn snapshot(client: &Client, name: &str) {
    if std::env::var_os("STRAND_UI_SCREENSHOTS").is_none() {
        return;
    }
    let path = screenshot_dir().join(format!("ui-{name}.png"));
    if let Ok(png) = client.screenshot().await {
        let _ = std::fs::write(&path, png);
        eprintln!("screenshot: {}", path.display());
    }
}

/// Opens `url` (a view's hash route), saying which one on failure.
pub async fn goto(client: &Client, url: &str) -> Result<(), String> {
    client.goto(url).await.map_err(|e| format!("{url}: {e}"))
}

/// Clicks the element `css` selects.
pub async fn click(client: &Client, css: &str) -> Result<(), String> {
    client
        .find(Locator::Css(css))
        .await
        .map_err(|e| format!("no {css}: {e}"))?
        .click()
        .await
        .map_err(|e| format!("cannot click {css}: {e}"))
}

/// Waits until the view shows `css` (views draw after their fetches).
pub async fn shown(client: &Client, css: &str) -> Result<(), String> {
    let script = format!(
        "return !!document.querySelector({})",
        serde_json::to_string(css).unwrap()
    );
    wait_for(client, css, &script, |v| v == true)
        .await
        .map(|_| ())
}

/// Clicks `css` once the view shows it.
pub async fn click_shown(client: &Client, css: &str) -> Result<(), String> {
    shown(client, css).await?;
    click(client, css).await
}

/// Types `text` into the field `css` (cleared first) once it is shown, as
/// a user would.
pub async fn type_into(client: &Client, css: &str, text: &str) -> Result<(), String> {
    shown(client, css).await?;
    let field = client
        .find(Locator::Css(css))
        .await
        .map_err(|e| format!("no {css}: {e}"))?;
    field.clear().await.map_err(|e| format!("{css}: {e}"))?;
    field
        .send_keys(text)
        .await
        .map_err(|e| format!("{css}: {e}"))
}

/// Chooses the option of value `value` in the `<select>` `css` selects, as
/// a user would (the page gets its change event).
pub async fn select(client: &Client, css: &str, value: &str) -> Result<(), String> {
    client
        .find(Locator::Css(css))
        .await
        .map_err(|e| format!("no {css}: {e}"))?
        .select_by_value(value)
        .await
        .map_err(|e| format!("cannot choose {value} in {css}: {e}"))
}
