//! [`HttpTeacher`]: the synchronous [`TeacherBackend`] the teacher-client actor drives, bridging
//! to the async [`TeacherClient`] through one process-wide runtime (the actor calls it on its
//! dedicated compute thread, never inside another runtime). The runtime is shared, not one per
//! backend, because the client's pooled keep-alive connections belong to the runtime that
//! opened them: a backend rebuilt with a runtime of its own would pick up a connection whose
//! runtime nobody drives any more and hang until the timeout.

use std::sync::{Arc, OnceLock};

use super::client::{TeacherClient, TeacherRequest};
use super::config::OnInvalid;
use super::error::TeacherError;
use crate::actors::engine::{DemoOutcome, EngineResult, TeacherBackend};
use crate::actors::messages::{Demo, PromptItem, Segment};

/// The encoded images of a prompt (the runtime's `PromptItem` carries only their hash; the data
/// layer that built the prompt knows the pixels). Return an empty list for a text-only prompt.
pub type ImageLookup = Arc<dyn Fn(&PromptItem) -> Result<Vec<Vec<u8>>, String> + Send + Sync>;

/// The HTTP teacher as a [`TeacherBackend`]. Segments carry text only (`tokens` empty): the
/// teacher's tokenizer is not ours, and the experts tokenise the text themselves.
pub struct HttpTeacher {
    runtime: &'static tokio::runtime::Runtime,
    client: TeacherClient,
    images: ImageLookup,
}

/// The runtime every [`HttpTeacher`] of the process runs its requests on (two workers, so
/// pooled connections are always driven).
fn shared_runtime() -> Result<&'static tokio::runtime::Runtime, TeacherError> {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    if let Some(rt) = RUNTIME.get() {
        return Ok(rt);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("prism-teacher-http")
        .build()
        .map_err(|e| TeacherError::Client(format!("tokio runtime: {e}")))?;
    // Another thread may have won the race; its runtime is the one kept.
    let _ = RUNTIME.set(rt);
    RUNTIME
        .get()
        .ok_or_else(|| TeacherError::Client("tokio runtime was not kept".into()))
}

impl HttpTeacher {
    /// A backend over `client`. Share one client between rebuilds of the backend (an actor
    /// restart) so they share the open cache, the limits and the connections.
    pub fn new(client: TeacherClient, images: ImageLookup) -> Result<HttpTeacher, TeacherError> {
        Ok(HttpTeacher {
            runtime: shared_runtime()?,
            client,
            images,
        })
    }

    /// A lookup for text-only prompts: any prompt with an image hash is an error.
    pub fn text_only() -> ImageLookup {
        Arc::new(|p: &PromptItem| match &p.image_hash {
            None => Ok(Vec::new()),
            Some(h) => Err(format!(
                "prompt {} has images ({h}) but the teacher was given no image lookup",
                p.uid
            )),
        })
    }

    pub fn client(&self) -> &TeacherClient {
        &self.client
    }

    /// The teacher's answer for `prompt` as a [`Demo`], or the error that ended the call.
    pub fn demo(&self, prompt: &PromptItem) -> Result<Demo, TeacherError> {
        self.runtime.block_on(self.demo_async(prompt))
    }

    /// Demonstrations for many prompts at once (up to `max_concurrency` calls in flight), in
    /// order, each a demo or the error that ended its call. For callers that hold a whole batch
    /// (the trait asks one prompt at a time).
    pub fn demos(&self, prompts: &[PromptItem]) -> Vec<Result<Demo, TeacherError>> {
        self.runtime.block_on(futures::future::join_all(
            prompts.iter().map(|p| self.demo_async(p)),
        ))
    }

    async fn demo_async(&self, prompt: &PromptItem) -> Result<Demo, TeacherError> {
        let label = format!("prompt {}", prompt.uid);
        let images = (self.images)(prompt).map_err(|message| TeacherError::Image {
            prompt: label.clone(),
            index: 0,
            message,
        })?;
        let req = TeacherRequest {
            label,
            text: prompt.text.clone(),
            images,
        };
        let answer = self.client.ask(&req).await?;
        Ok(Demo {
            prompt_uid: prompt.uid,
            caption: Segment {
                tokens: Vec::new(),
                text: answer.caption,
            },
            reasoning: Segment {
                tokens: Vec::new(),
                text: answer.cot,
            },
            source: format!("http:{}", self.client.config().model),
        })
    }
}

/// True for errors that concern one prompt alone and may be skipped under
/// [`OnInvalid::Skip`]: an answer that never became format-valid, or the server refusing this
/// request as malformed or too large (400, 413, 422). Authentication, retries exhausted,
/// cache and image-lookup errors concern every prompt and always fail.
pub fn skippable(e: &TeacherError) -> bool {
    match e {
        TeacherError::InvalidAnswer { .. } => true,
        TeacherError::Rejected { status, .. } => matches!(status, 400 | 413 | 422),
        _ => false,
    }
}

/// Applies the `on_invalid` policy to the result of one prompt of a batch.
pub fn outcome(
    policy: OnInvalid,
    prompt: &PromptItem,
    result: Result<Demo, TeacherError>,
) -> Result<DemoOutcome, TeacherError> {
    match result {
        Ok(d) => Ok(DemoOutcome::Demo(d)),
        Err(e) if policy == OnInvalid::Skip && skippable(&e) => Ok(DemoOutcome::Skipped {
            prompt_uid: prompt.uid,
            reason: e.reason().to_string(),
            message: e.to_string(),
        }),
        Err(e) => Err(e),
    }
}

impl TeacherBackend for HttpTeacher {
    /// A prompt whose answer never becomes valid (or whose call fails) is an error naming the
    /// prompt; it is never replaced by an unchecked answer.
    fn demonstrate(&mut self, prompt: &PromptItem) -> EngineResult<Demo> {
        Ok(self.demo(prompt)?)
    }

    /// The prompts are asked concurrently (under the client's concurrency and rate limits);
    /// the config's `on_invalid` decides whether a prompt that never gets a valid answer is
    /// skipped or fails the batch. The first non-skipped error names its prompt.
    fn demonstrate_batch(&mut self, prompts: &[PromptItem]) -> EngineResult<Vec<DemoOutcome>> {
        let policy = self.client.config().on_invalid;
        let mut out = Vec::with_capacity(prompts.len());
        for (p, r) in prompts.iter().zip(self.demos(prompts)) {
            out.push(outcome(policy, p, r).map_err(|e| format!("teacher: prompt {}: {e}", p.uid))?);
        }
        Ok(out)
    }
}
