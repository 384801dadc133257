//! [`HttpTeacher`]: the synchronous [`TeacherBackend`] the teacher-client actor drives, bridging
//! to the async [`TeacherClient`] with a runtime of its own (the actor calls it on its dedicated
//! compute thread, never inside another runtime).

use std::sync::Arc;

use super::client::{TeacherClient, TeacherRequest};
use super::error::TeacherError;
use crate::actors::engine::{EngineResult, TeacherBackend};
use crate::actors::messages::{Demo, PromptItem, Segment};

/// The encoded images of a prompt (the runtime's `PromptItem` carries only their hash; the data
/// layer that built the prompt knows the pixels). Return an empty list for a text-only prompt.
pub type ImageLookup = Arc<dyn Fn(&PromptItem) -> Result<Vec<Vec<u8>>, String> + Send + Sync>;

/// The HTTP teacher as a [`TeacherBackend`]. Segments carry text only (`tokens` empty): the
/// teacher's tokenizer is not ours, and the experts tokenise the text themselves.
pub struct HttpTeacher {
    runtime: tokio::runtime::Runtime,
    client: TeacherClient,
    images: ImageLookup,
}

impl HttpTeacher {
    /// A backend over `client`. Share one client between rebuilds of the backend (an actor
    /// restart) so they share the open cache and the limits.
    pub fn new(client: TeacherClient, images: ImageLookup) -> Result<HttpTeacher, TeacherError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name("prism-teacher-http")
            .build()
            .map_err(|e| TeacherError::Client(format!("tokio runtime: {e}")))?;
        Ok(HttpTeacher {
            runtime,
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

impl TeacherBackend for HttpTeacher {
    /// A prompt whose answer never becomes valid (or whose call fails) is an error naming the
    /// prompt; it is never replaced by an unchecked answer.
    fn demonstrate(&mut self, prompt: &PromptItem) -> EngineResult<Demo> {
        Ok(self.demo(prompt)?)
    }
}
