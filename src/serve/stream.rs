//! The live SSE answer of a `stream: true` request: the role chunk of every choice first, then
//! content deltas as the batcher sends tokens (each row's tokens so far decoded; only text that
//! extends what was sent, never ending inside a multi-byte character, never into or past a stop
//! string), then, once the batcher's reply came, the rest of each choice's final text (from
//! [`make_choice`], the single authority on text, finish reason and token counts), each choice's
//! finish chunk, the usage chunk if asked, and `[DONE]`. A generation error after the stream
//! started ends it with an OpenAI-style `{"error": …}` event. Dropping the stream (the client
//! went away) cancels the request, so its rows halt.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use axum::response::sse::Event;
use futures::Stream;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::DropGuard;

use super::api::{ApiError, Choice, StreamIds, stream_chunk, usage_chunk};
use super::batcher::{StreamToken, decode_ids, make_choice};
use crate::models::generation::GenerationOutput;
use crate::models::processor::Processor;
use crate::telemetry;

/// The part of a row's decoded text that may be sent now: without a trailing replacement
/// character (a token that ended inside a multi-byte character), cut before the first stop
/// string, and without a tail that could be the start of a stop string.
pub fn sendable<'a>(decoded: &'a str, stop: &[String]) -> &'a str {
    let text = decoded.trim_end_matches('\u{FFFD}');
    if let Some(at) = stop.iter().filter_map(|s| text.find(s.as_str())).min() {
        return &text[..at];
    }
    let hold = stop
        .iter()
        .flat_map(|s| {
            s.char_indices()
                .map(|(j, _)| j)
                .filter(|&j| j > 0 && text.ends_with(&s[..j]))
        })
        .max()
        .unwrap_or(0);
    &text[..text.len() - hold]
}

/// One streamed request, as the chat handler hands it over.
pub struct StreamRequest {
    pub ids: StreamIds,
    pub n: usize,
    pub stop: Vec<String>,
    pub prompt_tokens: usize,
    pub processor: Arc<Processor>,
    /// The request's tokens, as the batcher generates them.
    pub tokens: mpsc::UnboundedReceiver<StreamToken>,
    /// The batcher's final answer.
    pub reply: oneshot::Receiver<Result<Vec<GenerationOutput>, String>>,
    /// Cancels the request's job when the stream is dropped.
    pub cancel: DropGuard,
    /// When the request arrived (for the request-seconds histogram).
    pub arrived: Instant,
}

/// The SSE events of `req`. A task produces them; the returned stream owns the request's
/// cancel guard, so a client that disconnects halts the request's rows at once.
pub fn events(req: StreamRequest) -> impl Stream<Item = Result<Event, Infallible>> {
    let (tx, rx) = mpsc::channel::<String>(64);
    let StreamRequest {
        ids,
        n,
        stop,
        prompt_tokens,
        processor,
        tokens,
        reply,
        cancel,
        arrived,
    } = req;
    tokio::spawn(feed(
        tx,
        Feed {
            ids,
            n,
            stop,
            prompt_tokens,
            processor,
            arrived,
        },
        tokens,
        reply,
    ));
    futures::stream::unfold((rx, cancel), |(mut rx, cancel)| async move {
        let data = rx.recv().await?;
        Some((Ok(Event::default().data(data)), (rx, cancel)))
    })
}

struct Feed {
    ids: StreamIds,
    n: usize,
    stop: Vec<String>,
    prompt_tokens: usize,
    processor: Arc<Processor>,
    arrived: Instant,
}

/// Writes the payloads of one stream into `out`; returns early when the reader is gone.
async fn feed(
    out: mpsc::Sender<String>,
    f: Feed,
    mut tokens: mpsc::UnboundedReceiver<StreamToken>,
    reply: oneshot::Receiver<Result<Vec<GenerationOutput>, String>>,
) {
    macro_rules! send {
        ($payload:expr) => {
            if out.send($payload).await.is_err() {
                return;
            }
        };
    }
    for i in 0..f.n {
        send!(stream_chunk(
            &f.ids,
            i,
            json!({"role": "assistant", "content": ""}),
            None
        ));
    }
    let mut rows: Vec<Vec<i64>> = vec![Vec::new(); f.n];
    let mut sent: Vec<String> = vec![String::new(); f.n];
    while let Some(first) = tokens.recv().await {
        // Everything already queued is decoded once per row.
        let mut touched = vec![false; f.n];
        let mut next = Some(first);
        while let Some((i, id)) = next {
            if let Some(r) = rows.get_mut(i) {
                r.push(id);
                touched[i] = true;
            }
            next = tokens.try_recv().ok();
        }
        for i in (0..f.n).filter(|&i| touched[i]) {
            // A decoding error is reported with the final answer.
            let Ok(text) = decode_ids(&f.processor, &rows[i]) else {
                continue;
            };
            let now = sendable(&text, &f.stop);
            if now.len() > sent[i].len() && now.starts_with(sent[i].as_str()) {
                let delta = now[sent[i].len()..].to_string();
                sent[i] = now.to_string();
                send!(stream_chunk(&f.ids, i, json!({"content": delta}), None));
            }
        }
    }
    let outputs = match reply.await {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => return error_event(&out, e).await,
        Err(_) => return error_event(&out, "the server is shutting down".into()).await,
    };
    let choices = match outputs
        .into_iter()
        .map(|o| make_choice(&f.processor, o, &f.stop))
        .collect::<Result<Vec<Choice>, String>>()
    {
        Ok(c) => c,
        Err(e) => return error_event(&out, e).await,
    };
    for (i, c) in choices.iter().enumerate() {
        let done = sent.get(i).map_or("", String::as_str);
        match c.text.strip_prefix(done) {
            Some("") => {}
            Some(rest) => send!(stream_chunk(&f.ids, i, json!({"content": rest}), None)),
            None => tracing::warn!(
                "serve: streamed text of choice {i} is not a prefix of its final text \
                 (the tokenizer's decoding is not prefix-stable)"
            ),
        }
    }
    for (i, c) in choices.iter().enumerate() {
        send!(stream_chunk(
            &f.ids,
            i,
            json!({}),
            Some(c.finish_reason.as_str())
        ));
    }
    let completion: usize = choices.iter().map(|c| c.completion_tokens).sum();
    metrics::counter!(telemetry::SERVE_PROMPT_TOKENS_TOTAL).increment(f.prompt_tokens as u64);
    metrics::counter!(telemetry::SERVE_COMPLETION_TOKENS_TOTAL).increment(completion as u64);
    if f.ids.include_usage {
        send!(usage_chunk(&f.ids, f.prompt_tokens, &choices));
    }
    send!("[DONE]".to_string());
    metrics::histogram!(telemetry::SERVE_REQUEST_SECONDS).record(f.arrived.elapsed().as_secs_f64());
}

/// Ends a started stream with an OpenAI-style error event.
async fn error_event(out: &mpsc::Sender<String>, message: String) {
    tracing::error!("serve: a streamed request failed: {message}");
    let _ = out.send(ApiError::server(message).body().to_string()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::models::generation::StopReason;

    fn processor() -> Arc<Processor> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/qwen3_vl/tiny-qwen3-vl");
        Arc::new(Processor::from_dir(dir).unwrap())
    }

    fn tokens(p: &Processor, text: &str) -> Vec<i64> {
        p.tokenizer
            .encode(text)
            .unwrap()
            .into_iter()
            .map(i64::from)
            .collect()
    }

    /// Runs [`feed`] over `rows` (one token list per choice, sent interleaved), with `reply` as
    /// the batcher's answer; returns every payload.
    async fn run_feed(
        p: Arc<Processor>,
        rows: &[Vec<i64>],
        stop: &[String],
        reply: Result<Vec<GenerationOutput>, String>,
    ) -> Vec<String> {
        let (out_tx, mut out_rx) = mpsc::channel(1024);
        let (tok_tx, tok_rx) = mpsc::unbounded_channel();
        let (reply_tx, reply_rx) = oneshot::channel();
        let f = Feed {
            ids: StreamIds {
                id: "chatcmpl-t".into(),
                created: 1,
                model: "m".into(),
                include_usage: true,
            },
            n: rows.len(),
            stop: stop.to_vec(),
            prompt_tokens: 5,
            processor: p,
            arrived: Instant::now(),
        };
        let task = tokio::spawn(feed(out_tx, f, tok_rx, reply_rx));
        let longest = rows.iter().map(Vec::len).max().unwrap_or(0);
        for k in 0..longest {
            for (i, r) in rows.iter().enumerate() {
                if let Some(&t) = r.get(k) {
                    tok_tx.send((i, t)).unwrap();
                }
            }
            tokio::task::yield_now().await;
        }
        drop(tok_tx);
        reply_tx.send(reply).unwrap();
        task.await.unwrap();
        let mut payloads = Vec::new();
        while let Ok(p) = out_rx.try_recv() {
            payloads.push(p);
        }
        payloads
    }

    fn output(ids: &[i64], stop_reason: StopReason) -> GenerationOutput {
        GenerationOutput {
            token_ids: ids.to_vec(),
            logprobs: vec![0.0; ids.len()],
            stop_reason,
        }
    }

    fn deltas(payloads: &[String], index: u64) -> Vec<String> {
        payloads
            .iter()
            .filter_map(|p| serde_json::from_str::<serde_json::Value>(p).ok())
            .filter(|c| c["choices"][0]["index"] == index)
            .filter_map(|c| {
                c["choices"][0]["delta"]["content"]
                    .as_str()
                    .map(str::to_string)
            })
            .filter(|t| !t.is_empty())
            .collect()
    }

    #[tokio::test]
    async fn a_stream_never_sends_text_past_a_stop_string() {
        let p = processor();
        let a = tokens(&p, "alpha beta ✓ gamma delta");
        let b = tokens(&p, "多字节 words here");
        // Some token of b ends inside a character: the case the stream must hold back.
        assert!((1..b.len()).any(|k| decode_ids(&p, &b[..k]).unwrap().ends_with('\u{FFFD}')));
        let stop = stops(&[" gamma", "zzz"]);
        let reply = Ok(vec![
            output(&a, StopReason::Halted),
            output(&b, StopReason::Length),
        ]);
        let payloads = run_feed(p.clone(), &[a.clone(), b.clone()], &stop, reply).await;
        assert_eq!(payloads.last().unwrap(), "[DONE]");
        let chunks: Vec<serde_json::Value> = payloads[..payloads.len() - 1]
            .iter()
            .map(|x| serde_json::from_str(x).unwrap())
            .collect();
        // Role chunks of both choices first.
        for (i, c) in chunks[..2].iter().enumerate() {
            assert_eq!(c["choices"][0]["index"], i);
            assert_eq!(c["choices"][0]["delta"]["role"], "assistant");
        }
        let d0 = deltas(&payloads, 0);
        assert_eq!(d0.concat(), "alpha beta ✓");
        assert!(d0.len() > 2, "sent as generated: {d0:?}");
        // Choice 1 streamed piece by piece, no piece splitting a character.
        let d1 = deltas(&payloads, 1);
        assert_eq!(d1.concat(), "多字节 words here");
        assert!(d1.iter().all(|t| !t.contains('\u{FFFD}')), "{d1:?}");
        let finish: Vec<&str> = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["finish_reason"].as_str())
            .collect();
        assert_eq!(finish, ["stop", "length"]);
        let usage = &chunks.last().unwrap()["usage"];
        let want = make_choice(&p, output(&a, StopReason::Halted), &stop)
            .unwrap()
            .completion_tokens
            + b.len();
        assert_eq!(usage["completion_tokens"], want);
        assert_eq!(usage["prompt_tokens"], 5);
    }

    #[tokio::test]
    async fn a_generation_error_after_the_start_ends_with_an_error_event() {
        let p = processor();
        let a = tokens(&p, "some text");
        let payloads = run_feed(p, &[a], &[], Err("generation failed: boom".into())).await;
        let last: serde_json::Value = serde_json::from_str(payloads.last().unwrap()).unwrap();
        assert_eq!(last["error"]["message"], "generation failed: boom");
        assert_eq!(last["error"]["type"], "server_error");
        assert!(!payloads.iter().any(|p| p == "[DONE]"));
        assert_eq!(deltas(&payloads, 0).concat(), "some text");
    }

    fn stops(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn sendable_text_stops_before_stop_strings_and_partial_characters() {
        assert_eq!(sendable("hello", &[]), "hello");
        // A token that ended inside a multi-byte character.
        assert_eq!(sendable("caf\u{FFFD}", &[]), "caf");
        // Cut before the first stop string, whichever of them.
        assert_eq!(sendable("a END b STOP", &stops(&["STOP", "END"])), "a ");
        // A tail that may become a stop string is held back …
        assert_eq!(sendable("abc EN", &stops(&["END"])), "abc ");
        assert_eq!(sendable("abc E", &stops(&["END", "xE"])), "abc ");
        // … the longest one of them, and only a real prefix.
        assert_eq!(sendable("abEEN", &stops(&["EEND"])), "ab");
        assert_eq!(sendable("abcN", &stops(&["END"])), "abcN");
        // Multi-byte stop strings are held back on character boundaries.
        assert_eq!(sendable("x ✓", &stops(&["✓✓"])), "x ");
        assert_eq!(sendable("x ✓✓ y", &stops(&["✓✓"])), "x ");
        // A stop string at the very start leaves nothing.
        assert_eq!(sendable("END more", &stops(&["END"])), "");
    }

    #[test]
    fn sendable_prefixes_only_grow_up_to_the_stop() {
        // Feeding a text one character at a time: what may be sent never shrinks, never passes
        // the first stop string, and ends exactly at it.
        let text = "alpha beta ✓ gamma delta";
        let stop = stops(&["gam", "✓ x"]);
        let mut last = String::new();
        for end in (1..=text.len()).filter(|&e| text.is_char_boundary(e)) {
            let now = sendable(&text[..end], &stop);
            assert!(now.starts_with(last.as_str()), "{now:?} after {last:?}");
            last = now.to_string();
        }
        assert_eq!(last, "alpha beta ✓ ");
    }
}
