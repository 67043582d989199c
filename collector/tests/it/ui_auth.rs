//! The UI against a Strand that needs tokens, in headless Chromium: the
//! first API answer 401 brings up a token dialog; an unknown token is
//! refused with the API's reason; a read token shows the data and the live
//! tail (which must send the token too); saving a dashboard with it is
//! refused (403) and asks for an admin token, which saves; the token stays
//! for the browser session across a reload, never in a URL, and the key
//! button forgets it.

use serde_json::Value;
use strand_testkit::Strand;
use strand_testkit::browser::Client;
use strand_testkit::browser::{
    click, click_shown, in_browser, shown, snapshot, type_into, wait_for,
};

use crate::auth::{ADMIN, INGEST, READ, TOKEN_FLAGS, UNKNOWN};
use crate::support::send_log;

const DIALOG: &str = "dialog.token-dialog[open]";

/// The open token dialog's text, or null.
const DIALOG_TEXT: &str =
    "const d = document.querySelector('dialog.token-dialog[open]'); return d ? d.innerText : null";

const LOG_BODIES: &str = "return [...document.querySelectorAll('.log-table .log-row .log-body')]
    .map((e) => e.innerText)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ui_asks_for_a_token_and_keeps_it_for_the_session() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Strand::start(&dir.path().join("data"), &TOKEN_FLAGS).await;
    send_log(&daemon, Some(INGEST), "uiauth first line").await;
    in_browser(
        "ui-auth",
        |client| async move { walk(&client, &daemon).await },
    )
    .await;
}

async fn enter_token(client: &Client, token: &str) -> Result<(), String> {
    type_into(client, &format!("{DIALOG} input[name=\"token\"]"), token).await?;
    click(client, &format!("{DIALOG} button[type=\"submit\"]")).await
}

fn has_body(rows: &Value, text: &str) -> bool {
    rows.as_array().is_some_and(|rows| {
        rows.iter()
            .any(|r| r.as_str().is_some_and(|b| b.contains(text)))
    })
}

async fn walk(client: &Client, daemon: &Strand) -> Result<(), String> {
    client
        .goto(&daemon.url("/#/logs"))
        .await
        .map_err(|e| e.to_string())?;
    wait_for(client, "the token dialog", DIALOG_TEXT, |v| {
        v.as_str().is_some_and(|t| t.contains("`read` scope"))
    })
    .await?;
    snapshot(client, "token-dialog").await;

    // An unknown token: asked again, with the API's reason.
    enter_token(client, UNKNOWN).await?;
    wait_for(
        client,
        "the dialog again for an unknown token",
        DIALOG_TEXT,
        |v| v.as_str().is_some_and(|t| t.contains("not valid")),
    )
    .await?;

    // The read token: the logs appear, and the key button with them.
    enter_token(client, READ).await?;
    wait_for(
        client,
        "the logs once the token is given",
        LOG_BODIES,
        |v| has_body(v, "uiauth first line"),
    )
    .await?;
    shown(client, "#token-forget:not([hidden])").await?;

    // The live tail sends the token too.
    click(client, ".live-toggle input").await?;
    wait_for(
        client,
        "live tail on",
        "return document.querySelector('.live-indicator.on')?.innerText || ''",
        |v| v.as_str().is_some_and(|t| t.contains("live")),
    )
    .await?;
    send_log(daemon, Some(INGEST), "uiauth streamed line").await;
    wait_for(client, "the streamed log", LOG_BODIES, |v| {
        has_body(v, "uiauth streamed line")
    })
    .await?;

    // Saving a copy of a dashboard needs admin: asked for it, then saved.
    client
        .goto(&daemon.url("/#/dashboard/shop"))
        .await
        .map_err(|e| e.to_string())?;
    click_shown(client, ".dash-tools button.copy").await?;
    click_shown(client, ".dash-copy button[type=\"submit\"]").await?;
    // The copy is a draft until saved; saving it asks.
    click_shown(client, ".dash-tools button.save").await?;
    wait_for(client, "the dialog asking for admin", DIALOG_TEXT, |v| {
        v.as_str().is_some_and(|t| t.contains("`admin` scope"))
    })
    .await?;
    enter_token(client, ADMIN).await?;
    wait_for(client, "the saved copy", "return location.hash", |v| {
        v.as_str()
            .is_some_and(|h| h.starts_with("#/dashboard/shop-copy") && !h.contains("edit"))
    })
    .await?;
    let saved = reqwest::Client::new()
        .get(daemon.url("/api/dashboards/shop-copy"))
        .bearer_auth(READ)
        .send()
        .await
        .map_err(|e| e.to_string())?
        .status();
    if saved != 200 {
        return Err(format!("the copy is not stored: GET answered {saved}"));
    }

    // Kept for the session, across a reload; never in a URL.
    client.refresh().await.map_err(|e| e.to_string())?;
    client
        .goto(&daemon.url("/#/logs"))
        .await
        .map_err(|e| e.to_string())?;
    wait_for(client, "the logs after a reload", LOG_BODIES, |v| {
        has_body(v, "uiauth first line")
    })
    .await?;
    let seen = client
        .execute(
            "return { url: location.href, dialog: !!document.querySelector('dialog.token-dialog[open]'),
                      stored: sessionStorage.getItem('strand.token') }",
            vec![],
        )
        .await
        .map_err(|e| e.to_string())?;
    let url = seen["url"].as_str().unwrap_or_default();
    if url.contains(ADMIN) || url.contains(READ) || seen["dialog"] == true {
        return Err(format!(
            "token in the URL or asked again after a reload: {seen}"
        ));
    }
    if seen["stored"] != ADMIN {
        return Err(format!("the session does not keep the token: {seen}"));
    }

    // The key button forgets it: the next request asks again.
    click(client, "#token-forget").await?;
    wait_for(client, "the dialog after forgetting", DIALOG_TEXT, |v| {
        v.is_string()
    })
    .await?;
    snapshot(client, "token-forgotten").await;
    Ok(())
}
