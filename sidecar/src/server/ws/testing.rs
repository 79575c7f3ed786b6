//! A WebSocket over two channels, for tests of what runs on a socket
//! (this module's stream, Loki's tail).

use std::time::Duration;

use futures::channel::mpsc;
use futures::{Sink, SinkExt, Stream, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use super::DataSink;

/// The two channel ends as one socket.
pub(crate) struct Duplex {
    pub(crate) tx: mpsc::Sender<Message>,
    pub(crate) rx: mpsc::Receiver<Result<Message, std::io::Error>>,
}

impl Stream for Duplex {
    type Item = Result<Message, std::io::Error>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.rx.poll_next_unpin(cx)
    }
}

impl DataSink for Duplex {
    fn send_text<'a>(
        &'a mut self,
        text: String,
        _st: &'a crate::server::AppState,
    ) -> std::pin::Pin<Box<dyn Future<Output = std::io::Result<()>> + Send + 'a>> {
        Box::pin(async move {
            self.tx
                .send(Message::Text(text.into()))
                .await
                .map_err(std::io::Error::other)
        })
    }
}

impl Sink<Message> for Duplex {
    type Error = mpsc::SendError;
    fn poll_ready(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.tx.poll_ready_unpin(cx)
    }
    fn start_send(mut self: std::pin::Pin<&mut Self>, m: Message) -> Result<(), Self::Error> {
        self.tx.start_send_unpin(m)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.tx.poll_flush_unpin(cx)
    }
    fn poll_close(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.tx.poll_close_unpin(cx)
    }
}

/// The next text frame the server sent (other frames skipped); panics on a
/// close frame or after 10 s.
pub(crate) async fn next_text(rx: &mut mpsc::Receiver<Message>) -> String {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), rx.next())
            .await
            .expect("a frame within 10 s")
            .expect("the server keeps the channel open")
        {
            Message::Text(t) => return t.as_str().to_string(),
            Message::Close(f) => panic!("closed: {f:?}"),
            _ => continue,
        }
    }
}
