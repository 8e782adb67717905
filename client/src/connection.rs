//! One pipelined connection to a broker: requests carry ids, responses are matched to
//! them whatever order they come back in.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use flatbuffers::{FlatBufferBuilder, UnionWIPOffset, WIPOffset};
use futures_lite::io::{AsyncReadExt, ReadHalf, WriteHalf};
use glommio::channels::local_channel::{self, LocalSender};
use weir_wire::native::schema;
use weir_wire::native::{self, FRAME_PREFIX_BYTES};

use crate::error::{ClientError, ClientResult};
use crate::gate::ArrivalGate;
use crate::io::Stream;
use crate::tls::TlsClient;

/// The largest response frame accepted: responses are bounded by what was asked for.
pub const RESPONSE_FRAME_BYTES_MAX: usize = 1 << 30;

/// A response frame: its verified header and its payload.
#[derive(Debug, Clone)]
pub struct ResponseFrame {
    pub header: Bytes,
    pub payload: Bytes,
}

impl ResponseFrame {
    pub fn response(&self) -> ClientResult<schema::Response<'_>> {
        Ok(native::parse_response(&self.header)?)
    }

    /// The response, or the error the broker put in it.
    pub fn checked(&self) -> ClientResult<schema::Response<'_>> {
        let response = self.response()?;
        if response.error() != schema::ErrorCode::None {
            return Err(ClientError::broker(
                response.error(),
                response.error_message(),
            ));
        }
        Ok(response)
    }

    /// The bytes of a payload slice of this frame.
    pub fn slice(&self, slice: Option<&schema::PayloadSlice>) -> ClientResult<Bytes> {
        match slice {
            None => Ok(Bytes::new()),
            Some(slice) => Ok(self
                .payload
                .slice(native::payload_range(slice, self.payload.len())?)),
        }
    }
}

type Waiters = Rc<RefCell<HashMap<u64, LocalSender<ClientResult<ResponseFrame>>>>>;

#[derive(Debug)]
pub struct Connection {
    address: String,
    /// The write half, taken by the request whose turn at `write_gate` it is.
    writer: RefCell<Option<WriteHalf<Stream>>>,
    /// Requests are written in the order they were made (`ArrivalGate`: strictly FIFO).
    write_gate: Rc<ArrivalGate>,
    /// The socket, for vectored sends, on a plaintext connection.
    fd: Option<std::os::fd::RawFd>,
    waiters: Waiters,
    next_id: Cell<u64>,
    failure: Rc<RefCell<Option<String>>>,
    _reader: glommio::task::JoinHandle<()>,
}

impl Connection {
    pub async fn connect(address: &str) -> ClientResult<Rc<Connection>> {
        Connection::open(address, None).await
    }

    /// A connection to `address`, over TLS with `tls`'s trust and identity when given.
    pub async fn open(address: &str, tls: Option<&TlsClient>) -> ClientResult<Rc<Connection>> {
        let stream =
            crate::tls::dial(address, tls)
                .await
                .map_err(|source| ClientError::Connect {
                    address: address.to_string(),
                    source,
                })?;
        let fd = stream.plain_fd();
        let (reader, writer) = futures_lite::io::split(stream);
        let waiters: Waiters = Rc::new(RefCell::new(HashMap::new()));
        let failure = Rc::new(RefCell::new(None));
        let (reader_waiters, reader_failure) = (waiters.clone(), failure.clone());
        let reader_task = glommio::spawn_local(async move {
            let error = read_responses(reader, &reader_waiters).await;
            reader_failure.borrow_mut().get_or_insert(error.clone());
            for (_, waiter) in reader_waiters.borrow_mut().drain() {
                let _ = waiter.try_send(Err(ClientError::ConnectionLost(error.clone())));
            }
        })
        .detach();
        Ok(Rc::new(Connection {
            address: address.to_string(),
            writer: RefCell::new(Some(writer)),
            write_gate: ArrivalGate::new(),
            fd,
            waiters,
            next_id: Cell::new(1),
            failure,
            _reader: reader_task,
        }))
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    pub fn is_broken(&self) -> bool {
        self.failure.borrow().is_some()
    }

    /// Sends a request whose body `build` creates, with `payload` after the header, and
    /// awaits its response (or, with `expect_response` false, only its sending).
    pub async fn request(
        &self,
        body_type: schema::RequestBody,
        build: impl FnOnce(&mut FlatBufferBuilder<'static>) -> WIPOffset<UnionWIPOffset>,
        payload: Vec<Bytes>,
        expect_response: bool,
    ) -> ClientResult<Option<ResponseFrame>> {
        self.send(body_type, build, payload, expect_response)
            .await?
            .wait()
            .await
    }

    /// Writes a request (in the order of the calls: the place in line is taken before
    /// anything awaits) and returns what waits for its response.
    pub async fn send(
        &self,
        body_type: schema::RequestBody,
        build: impl FnOnce(&mut FlatBufferBuilder<'static>) -> WIPOffset<UnionWIPOffset>,
        payload: Vec<Bytes>,
        expect_response: bool,
    ) -> ClientResult<PendingResponse> {
        if let Some(error) = self.failure.borrow().as_ref() {
            return Err(ClientError::ConnectionLost(error.clone()));
        }
        let turn = self.write_gate.take_ticket();
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let mut builder = FlatBufferBuilder::with_capacity(256);
        let body = build(&mut builder);
        let request = schema::Request::create(
            &mut builder,
            &schema::RequestArgs {
                request_id: id,
                body_type,
                body: Some(body),
            },
        );
        builder.finish(request, Some("WEIR"));
        let header = builder.finished_data();
        let payload_length: usize = payload.iter().map(Bytes::len).sum();
        let mut head = BytesMut::with_capacity(FRAME_PREFIX_BYTES + header.len());
        head.extend_from_slice(&native::encode_prefix(header.len(), payload_length));
        head.extend_from_slice(header);
        let mut parts = Vec::with_capacity(1 + payload.len());
        parts.push(head.freeze());
        parts.extend(payload);
        let receiver = expect_response.then(|| {
            let (sender, receiver) = local_channel::new_bounded(1);
            self.waiters.borrow_mut().insert(id, sender);
            receiver
        });
        // Written by the requesting task itself, in turn: requests go out in the order
        // they were made, without a hop through a writer task.
        turn.wait_turn().await;
        if let Some(error) = self.failure.borrow().as_ref() {
            self.waiters.borrow_mut().remove(&id);
            return Err(ClientError::ConnectionLost(error.clone()));
        }
        // Missing only if a request was dropped in the middle of its write: the stream
        // then holds half a frame and cannot be used again.
        let Some(mut writer) = self.writer.borrow_mut().take() else {
            let reason = "a request was abandoned while it was being written";
            self.failure.borrow_mut().get_or_insert(reason.into());
            self.waiters.borrow_mut().remove(&id);
            return Err(ClientError::ConnectionLost(reason.into()));
        };
        let written = crate::io::write_frame(&mut writer, self.fd, &parts).await;
        *self.writer.borrow_mut() = Some(writer);
        drop(turn);
        if let Err(error) = written {
            self.failure.borrow_mut().get_or_insert(error.to_string());
            self.waiters.borrow_mut().remove(&id);
            return Err(ClientError::ConnectionLost(error.to_string()));
        }
        Ok(PendingResponse {
            receiver,
            failure: self.failure.clone(),
        })
    }
}

/// A written request's response, to be awaited.
#[derive(Debug)]
pub struct PendingResponse {
    receiver: Option<glommio::channels::local_channel::LocalReceiver<ClientResult<ResponseFrame>>>,
    failure: Rc<RefCell<Option<String>>>,
}

impl PendingResponse {
    /// The response; `None` for a request sent without expecting one.
    pub async fn wait(self) -> ClientResult<Option<ResponseFrame>> {
        let Some(receiver) = self.receiver else {
            return Ok(None);
        };
        match receiver.recv().await {
            Some(result) => result.map(Some),
            None => Err(ClientError::ConnectionLost(
                self.failure.borrow().clone().unwrap_or_default(),
            )),
        }
    }
}

/// Reads response frames and hands each to its waiter. Returns why it stopped.
async fn read_responses(mut reader: ReadHalf<Stream>, waiters: &Waiters) -> String {
    loop {
        let mut prefix = [0u8; FRAME_PREFIX_BYTES];
        if let Err(error) = reader.read_exact(&mut prefix).await {
            return format!("reading from the broker: {error}");
        }
        let prefix = match native::decode_prefix(&prefix, RESPONSE_FRAME_BYTES_MAX) {
            Ok(prefix) => prefix,
            Err(error) => return error.to_string(),
        };
        let mut body = BytesMut::zeroed(prefix.remaining());
        if let Err(error) = reader.read_exact(&mut body).await {
            return format!("reading from the broker: {error}");
        }
        let header = body.split_to(prefix.header_length).freeze();
        let frame = ResponseFrame {
            header,
            payload: body.freeze(),
        };
        let (id, fatal) = match frame.response() {
            Ok(response) => (response.request_id(), response.request_id() == 0),
            Err(error) => return error.to_string(),
        };
        if fatal {
            let message = frame
                .response()
                .ok()
                .and_then(|r| r.error_message().map(str::to_string));
            return format!(
                "the broker closed the connection: {}",
                message.unwrap_or_default()
            );
        }
        if let Some(waiter) = waiters.borrow_mut().remove(&id) {
            let _ = waiter.try_send(Ok(frame));
        }
    }
}
