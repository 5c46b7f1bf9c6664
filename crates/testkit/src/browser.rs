//! A headless Chromium driven over W3C WebDriver: Debian's `chromedriver` on a free port, and
//! a tiny client over `ureq` (sessions, navigation, elements, scripts, cookies, screenshots,
//! the viewport, the browser's console log).
//!
//! Chromium and chromedriver come from Debian's `chromium` and `chromium-driver`
//! (`scripts/prereqs.sh` installs them); `CHROMIUM_BIN` and `CHROMEDRIVER` name others. A
//! missing one fails the test with the command that installs it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::process::{free_port, Proc, TempDir};

/// The W3C name of an element reference in WebDriver answers.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
/// How long the helpers that wait ([`Browser::wait_for`], ...) wait by default.
pub const BROWSER_TIMEOUT: Duration = Duration::from_secs(15);

fn find_program(env: &str, candidates: &[&str], package: &str) -> PathBuf {
    if let Ok(path) = std::env::var(env) {
        let path = PathBuf::from(path);
        assert!(path.is_file(), "{env}={} is not a file", path.display());
        return path;
    }
    for candidate in candidates {
        let path = Path::new(candidate);
        if path.is_file() {
            return path.to_path_buf();
        }
    }
    panic!(
        "{} is missing: the browser tests need Debian's `{package}` (`scripts/prereqs.sh`, or \
         `apt-get install -y chromium chromium-driver`), or {env} naming it",
        candidates[0]
    );
}

/// The Chromium binary (`CHROMIUM_BIN`, else Debian's `/usr/bin/chromium`).
pub fn chromium_bin() -> PathBuf {
    find_program(
        "CHROMIUM_BIN",
        &["/usr/bin/chromium", "/usr/bin/chromium-browser"],
        "chromium",
    )
}

/// The chromedriver binary (`CHROMEDRIVER`, else Debian's `/usr/bin/chromedriver`).
pub fn chromedriver_bin() -> PathBuf {
    find_program(
        "CHROMEDRIVER",
        &["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"],
        "chromium-driver",
    )
}

/// One entry of the browser's console log.
#[derive(Clone, Debug)]
pub struct LogEntry {
    pub level: String,
    pub source: String,
    pub message: String,
}

/// A headless Chromium session; dropping it ends the session and stops chromedriver.
pub struct Browser {
    base: String,
    agent: ureq::Agent,
    // Field order is drop order: the session goes (Drop), then chromedriver, then its files.
    driver: Proc,
    _dir: TempDir,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium whose window is `width`×`height`, logging
    /// the console at every level.
    pub fn start(width: u32, height: u32) -> Self {
        let chromium = chromium_bin();
        let driver_bin = chromedriver_bin();
        let dir = TempDir::new("browser");
        let port = free_port();
        let mut command = Command::new(&driver_bin);
        command.arg(format!("--port={port}"));
        let mut driver = Proc::spawn("chromedriver", command, dir.path().join("chromedriver.log"));
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(60))
            .build();
        let status_url = format!("http://127.0.0.1:{port}/status");
        driver.wait_ready("chromedriver", Duration::from_secs(20), || {
            agent
                .get(&status_url)
                .call()
                .ok()
                .and_then(|r| r.into_json::<Value>().ok())
                .is_some_and(|v| v["value"]["ready"] == json!(true))
        });
        let profile = dir.path().join("profile");
        fs::create_dir_all(&profile).expect("creating the browser profile dir");
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium.display().to_string(),
                "args": [
                    "--headless=new",
                    // Root in a container: Chromium's sandbox needs user namespaces.
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--no-first-run",
                    "--disable-extensions",
                    "--hide-scrollbars",
                    format!("--window-size={width},{height}"),
                    format!("--user-data-dir={}", profile.display()),
                ],
            },
            "goog:loggingPrefs": {"browser": "ALL"},
        }}});
        let base = format!("http://127.0.0.1:{port}");
        let answer = request(
            &agent,
            "POST",
            &format!("{base}/session"),
            Some(&capabilities),
        )
        .unwrap_or_else(|e| {
            panic!(
                "starting Chromium through chromedriver: {e}\n{}",
                crate::tail(&dir.path().join("chromedriver.log"), 40)
            )
        });
        let session = answer["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no sessionId in {answer}"))
            .to_string();
        let browser = Browser {
            base: format!("{base}/session/{session}"),
            agent,
            driver,
            _dir: dir,
        };
        browser.set_viewport(width, height);
        browser
    }

    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let url = format!("{}{path}", self.base);
        request(&self.agent, method, &url, body)
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"))
    }

    fn try_call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, String> {
        request(&self.agent, method, &format!("{}{path}", self.base), body)
    }

    /// Opens `url` (waits for the load event).
    pub fn goto(&self, url: &str) {
        self.call("POST", "/url", Some(&json!({ "url": url })));
    }

    /// The current URL.
    pub fn url(&self) -> String {
        self.call("GET", "/url", None)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The page's whole current DOM as markup.
    pub fn source(&self) -> String {
        self.call("GET", "/source", None)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Runs `script` (a function body; `arguments` are `args`) and answers its return value.
    pub fn eval(&self, script: &str, args: &[Value]) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            Some(&json!({ "script": script, "args": args })),
        )
    }

    /// Runs `script` (a function body whose last argument is the callback to call with the
    /// result) and answers what it passed.
    pub fn eval_async(&self, script: &str, args: &[Value]) -> Value {
        self.call(
            "POST",
            "/execute/async",
            Some(&json!({ "script": script, "args": args })),
        )
    }

    /// The element matching the CSS `selector`, if there is one now.
    pub fn find(&self, selector: &str) -> Option<Element<'_>> {
        let answer = self
            .try_call(
                "POST",
                "/element",
                Some(&json!({"using": "css selector", "value": selector})),
            )
            .ok()?;
        let id = answer[ELEMENT].as_str()?.to_string();
        Some(Element { browser: self, id })
    }

    /// Every element matching the CSS `selector` now.
    pub fn find_all(&self, selector: &str) -> Vec<Element<'_>> {
        let answer = self.call(
            "POST",
            "/elements",
            Some(&json!({"using": "css selector", "value": selector})),
        );
        answer
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .filter_map(|item| item[ELEMENT].as_str())
                    .map(|id| Element {
                        browser: self,
                        id: id.to_string(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Waits (up to [`BROWSER_TIMEOUT`]) for a displayed element matching `selector`.
    pub fn wait_for(&self, selector: &str) -> Element<'_> {
        self.wait_for_within(selector, BROWSER_TIMEOUT)
    }

    /// Waits up to `timeout` for a displayed element matching `selector`.
    pub fn wait_for_within(&self, selector: &str, timeout: Duration) -> Element<'_> {
        let started = Instant::now();
        loop {
            if let Some(element) = self.find(selector).filter(Element::displayed) {
                return element;
            }
            assert!(
                started.elapsed() < timeout,
                "no visible `{selector}` on {} after {timeout:?}; page text:\n{}\nconsole: {:?}",
                self.url(),
                self.page_text(),
                self.console_log()
            );
            sleep(Duration::from_millis(100));
        }
    }

    /// Waits for a displayed element matching `selector` and clicks it. A page that redraws
    /// between the find and the click leaves a stale element; the click then goes to the
    /// element that replaced it, as a person's click would.
    pub fn click(&self, selector: &str) {
        let started = Instant::now();
        loop {
            let element = self.wait_for(selector);
            match self.try_call("POST", &element.path("/click"), Some(&json!({}))) {
                Ok(_) => return,
                Err(e) if e.contains("stale element") && started.elapsed() < BROWSER_TIMEOUT => {
                    sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("clicking `{selector}`: {e}"),
            }
        }
    }

    /// Waits up to `timeout` until the text of `selector` satisfies `check`; answers it.
    pub fn wait_text(
        &self,
        selector: &str,
        timeout: Duration,
        mut check: impl FnMut(&str) -> bool,
    ) -> String {
        let started = Instant::now();
        loop {
            // The page may redraw between finding the element and reading it.
            let text = self.find(selector).and_then(|e| e.try_text());
            if let Some(text) = text.filter(|t| check(t)) {
                return text;
            }
            assert!(
                started.elapsed() < timeout,
                "`{selector}` never had the expected text within {timeout:?}; page text:\n{}",
                self.page_text()
            );
            sleep(Duration::from_millis(100));
        }
    }

    /// The visible text of the whole page.
    pub fn page_text(&self) -> String {
        self.eval("return document.body ? document.body.innerText : '';", &[])
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The cookie `name` as WebDriver shows it (HttpOnly ones too), if set.
    pub fn cookie(&self, name: &str) -> Option<Value> {
        self.try_call("GET", &format!("/cookie/{name}"), None).ok()
    }

    /// Sets the page's viewport to `width`×`height` CSS pixels (device metrics override).
    pub fn set_viewport(&self, width: u32, height: u32) {
        self.call(
            "POST",
            "/goog/cdp/execute",
            Some(&json!({
                "cmd": "Emulation.setDeviceMetricsOverride",
                "params": {"width": width, "height": height, "deviceScaleFactor": 1,
                           "mobile": width < 600},
            })),
        );
    }

    /// A PNG of the viewport.
    pub fn screenshot(&self) -> Vec<u8> {
        let answer = self.call("GET", "/screenshot", None);
        decode_base64(answer.as_str().unwrap_or_default())
            .unwrap_or_else(|| panic!("the screenshot is not base64"))
    }

    /// A PNG of the whole page (as tall as its content), written to `path`.
    pub fn save_full_page_screenshot(&self, path: &Path, width: u32) {
        let height = self
            .eval(
                "return Math.ceil(document.documentElement.scrollHeight);",
                &[],
            )
            .as_u64()
            .unwrap_or(900)
            .clamp(400, 4000);
        let height = u32::try_from(height).unwrap_or(900);
        self.set_viewport(width, height);
        let png = self.screenshot();
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).expect("creating the screenshot dir");
        }
        fs::write(path, png).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }

    /// The console messages logged since the last call (chromedriver hands each out once).
    pub fn console_log(&self) -> Vec<LogEntry> {
        let body = json!({"type": "browser"});
        let answer = self
            .try_call("POST", "/se/log", Some(&body))
            .or_else(|_| self.try_call("POST", "/log", Some(&body)))
            .unwrap_or_else(|e| panic!("reading the browser log: {e}"));
        answer
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .map(|item| LogEntry {
                        level: item["level"].as_str().unwrap_or_default().to_string(),
                        source: item["source"].as_str().unwrap_or_default().to_string(),
                        message: item["message"].as_str().unwrap_or_default().to_string(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = request(&self.agent, "DELETE", &self.base, None);
        self.driver.stop();
    }
}

/// An element of the page.
pub struct Element<'a> {
    browser: &'a Browser,
    id: String,
}

impl Element<'_> {
    fn path(&self, what: &str) -> String {
        format!("/element/{}{what}", self.id)
    }

    pub fn click(&self) {
        self.browser
            .call("POST", &self.path("/click"), Some(&json!({})));
    }

    /// Types `text` into it (after what it holds).
    pub fn type_text(&self, text: &str) {
        self.browser
            .call("POST", &self.path("/value"), Some(&json!({ "text": text })));
    }

    pub fn clear(&self) {
        self.browser
            .call("POST", &self.path("/clear"), Some(&json!({})));
    }

    /// Its rendered text.
    pub fn text(&self) -> String {
        self.browser
            .call("GET", &self.path("/text"), None)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Its rendered text, or `None` when it left the page (redrawn) since it was found.
    pub fn try_text(&self) -> Option<String> {
        self.browser
            .try_call("GET", &self.path("/text"), None)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
    }

    /// The DOM property `name` (e.g. `value`).
    pub fn property(&self, name: &str) -> Value {
        self.browser
            .call("GET", &self.path(&format!("/property/{name}")), None)
    }

    pub fn displayed(&self) -> bool {
        self.browser
            .try_call("GET", &self.path("/displayed"), None)
            .is_ok_and(|v| v == json!(true))
    }

    /// Selects the `<option>` with this value (of a `<select>`).
    pub fn select(&self, value: &str) {
        let selector = format!("option[value=\"{value}\"]");
        let option = self.browser.call(
            "POST",
            &self.path("/element"),
            Some(&json!({"using": "css selector", "value": selector})),
        );
        let id = option[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no option {value}"))
            .to_string();
        Element {
            browser: self.browser,
            id,
        }
        .click();
    }

    /// Its bounding box: (x, y, width, height) in CSS pixels.
    pub fn rect(&self) -> (f64, f64, f64, f64) {
        let r = self.browser.call("GET", &self.path("/rect"), None);
        let n = |k: &str| r[k].as_f64().unwrap_or_default();
        (n("x"), n("y"), n("width"), n("height"))
    }
}

/// One WebDriver call: its `value`, or the error WebDriver answered.
fn request(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    body: Option<&Value>,
) -> Result<Value, String> {
    let call = agent.request(method, url);
    let result = match body {
        Some(body) => call.send_json(body.clone()),
        None => call.call(),
    };
    match result {
        Ok(response) => response
            .into_json::<Value>()
            .map(|v| v["value"].clone())
            .map_err(|e| format!("unreadable answer: {e}")),
        Err(ureq::Error::Status(code, response)) => {
            let body = response.into_string().unwrap_or_default();
            Err(format!("HTTP {code}: {body}"))
        }
        Err(error) => Err(error.to_string()),
    }
}

/// Standard base64 (with or without padding) to bytes.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut buffer = 0u32;
    let mut bits = 0;
    for byte in text.bytes() {
        let value = match byte {
            b'A'..=b'Z' => byte - b'A',
            b'a'..=b'z' => byte - b'a' + 26,
            b'0'..=b'9' => byte - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' | b'\n' | b'\r' => continue,
            _ => return None,
        };
        buffer = (buffer << 6) | u32::from(value);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
            buffer &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::decode_base64;

    #[test]
    fn base64_decodes() {
        assert_eq!(decode_base64("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(decode_base64("aGVsbG8").unwrap(), b"hello");
        assert_eq!(decode_base64("iVBORw0KGgo=").unwrap(), b"\x89PNG\r\n\x1a\n");
        assert!(decode_base64("a*b").is_none());
    }
}
