//! The HTTP teacher behind the teacher-client actor: the actor's factory builds an
//! [`HttpTeacher`] on its compute thread over one shared [`TeacherClient`], images are looked up
//! by the prompt's image hash and sent as data URLs, and a restarted actor (new backend, same
//! client and on-disk cache) pays for nothing again even with an empty in-memory cache.

mod teacher_server;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use prism::actors::compute::BusyMeter;
use prism::actors::config::{ActorsConfig, DeviceSpec};
use prism::actors::engine::{TeacherBackend, TeacherFactory};
use prism::actors::faults::FaultInjector;
use prism::actors::messages::PromptItem;
use prism::actors::teacher::{DemoCache, TeacherActor, TeacherArgs, TeacherMsg};
use prism::teacher::{HttpTeacher, ImageLookup, TeacherClient, TeacherConfig};
use ractor::Actor;
use ractor::rpc::CallResult;
use teacher_server::{TestServer, valid_answer};

const T: Option<Duration> = Some(Duration::from_secs(20));

fn png(seed: u8) -> Vec<u8> {
    let img = image::RgbImage::from_pixel(2, 2, image::Rgb([seed, seed, 0]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actor_with_http_backend_survives_restart_without_paying_again() {
    let server = TestServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = TeacherConfig::new(
        &server.base_url(),
        "test-model",
        dir.path().join("cache.jsonl"),
    );
    cfg.timeout_secs = 5.0;
    let client = TeacherClient::with_api_key(cfg, None).unwrap();
    let pixels: HashMap<String, Vec<Vec<u8>>> =
        HashMap::from([("img-a".to_string(), vec![png(1)])]);
    let images: ImageLookup = Arc::new(move |p: &PromptItem| match &p.image_hash {
        None => Ok(Vec::new()),
        Some(h) => pixels
            .get(h)
            .cloned()
            .ok_or_else(|| format!("no pixels for {h}")),
    });
    let factory: TeacherFactory = {
        let client = client.clone();
        Arc::new(move |_device| {
            let backend = HttpTeacher::new(client.clone(), images.clone())?;
            Ok(Box::new(backend) as Box<dyn TeacherBackend>)
        })
    };
    let args = |cache: DemoCache| TeacherArgs {
        name: "teacher-client".into(),
        stage: "test".into(),
        device: DeviceSpec::Cpu,
        factory: factory.clone(),
        cache,
        faults: FaultInjector::new(&ActorsConfig::default().faults, "teacher-client"),
        meter: BusyMeter::new("test", "teacher-client", "cpu"),
    };
    let prompt = |uid: u64, text: &str, image: Option<&str>| PromptItem {
        uid,
        prompt_ids: vec![uid as i64],
        text: text.into(),
        image_hash: image.map(str::to_string),
        answer: None,
    };
    let ask = Arc::new(vec![
        prompt(0, "<image>\nHow many?", Some("img-a")),
        prompt(1, "Name a colour.", None),
    ]);

    let (t, h) = Actor::spawn(None, TeacherActor, args(DemoCache::default()))
        .await
        .unwrap();
    let CallResult::Success(demos) = t
        .call(|r| TeacherMsg::Demonstrate(ask.clone(), r), T)
        .await
        .unwrap()
    else {
        panic!("teacher failed")
    };
    assert_eq!(
        format!("{}\n{}", demos[0].caption.text, demos[0].reasoning.text),
        valid_answer("How many?")
    );
    assert_eq!(demos[1].prompt_uid, 1);
    let calls = server.calls();
    assert_eq!(calls.len(), 2);
    let sent_image = calls
        .iter()
        .find(|c| c.prompt == "How many?")
        .map(|c| c.body["messages"][1]["content"][0]["image_url"]["url"].clone())
        .unwrap();
    assert!(
        sent_image
            .as_str()
            .unwrap()
            .starts_with("data:image/png;base64,")
    );
    t.stop(None);
    h.await.unwrap();

    // A restart with an empty in-memory cache (a new process would have one): the on-disk
    // cache answers.
    let (t2, h2) = Actor::spawn(None, TeacherActor, args(DemoCache::default()))
        .await
        .unwrap();
    let again = t2
        .call(|r| TeacherMsg::Demonstrate(ask.clone(), r), T)
        .await
        .unwrap();
    assert_eq!(again, CallResult::Success(demos));
    assert_eq!(server.total_calls(), 2, "paid again after a restart");
    assert_eq!(client.stats().cache_hits, 2);
    t2.stop(None);
    h2.await.unwrap();
}
