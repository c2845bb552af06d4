//! gRPC server reflection, `v1` and `v1alpha` (older grpcurl, grpcui and
//! Python's grpcio-reflection speak only `v1alpha`). A file is answered
//! together with every file it imports, transitively, as the reflection
//! spec asks: a client that gets `gateway.proto` can resolve
//! `envelope.proto`'s types without a second round trip.

use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use prost::Message;
use prost_types::{DescriptorProto, FileDescriptorSet};
use tonic::{Request, Response, Status, Streaming};
use tonic_reflection::pb::v1::{
    self, server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    server_reflection_server::ServerReflection,
};
use tonic_reflection::pb::v1alpha;

/// Every registered file, and where each symbol is defined.
struct Index {
    /// File name -> (encoded `FileDescriptorProto`, the files it imports).
    files: BTreeMap<String, (Vec<u8>, Vec<String>)>,
    /// Fully qualified symbol -> the file defining it.
    symbols: BTreeMap<String, String>,
    /// Fully qualified service names.
    services: Vec<String>,
}

impl Index {
    fn new(sets: &[&[u8]]) -> Result<Self, prost::DecodeError> {
        let mut index = Self {
            files: BTreeMap::new(),
            symbols: BTreeMap::new(),
            services: Vec::new(),
        };
        for bytes in sets {
            for file in FileDescriptorSet::decode(*bytes)?.file {
                index.add(file);
            }
        }
        Ok(index)
    }

    fn add(&mut self, file: prost_types::FileDescriptorProto) {
        let name = file.name().to_owned();
        let qualify = |symbol: &str| match file.package() {
            "" => symbol.to_owned(),
            package => format!("{package}.{symbol}"),
        };
        for service in &file.service {
            let service_name = qualify(service.name());
            for method in &service.method {
                self.symbols
                    .insert(format!("{service_name}.{}", method.name()), name.clone());
            }
            self.symbols.insert(service_name.clone(), name.clone());
            self.services.push(service_name);
        }
        for message in &file.message_type {
            self.add_message(&qualify(message.name()), message, &name);
        }
        for e in &file.enum_type {
            self.symbols.insert(qualify(e.name()), name.clone());
        }
        let encoded = file.encode_to_vec();
        self.files.insert(name, (encoded, file.dependency));
    }

    fn add_message(&mut self, full: &str, message: &DescriptorProto, file: &str) {
        self.symbols.insert(full.to_owned(), file.to_owned());
        for nested in &message.nested_type {
            self.add_message(&format!("{full}.{}", nested.name()), nested, file);
        }
        for e in &message.enum_type {
            self.symbols
                .insert(format!("{full}.{}", e.name()), file.to_owned());
        }
    }

    /// `name` and everything it imports, transitively, `name` first.
    fn with_dependencies(&self, name: &str) -> Option<Vec<Vec<u8>>> {
        let mut seen = BTreeSet::new();
        let mut order = Vec::new();
        let mut stack = vec![name.to_owned()];
        while let Some(next) = stack.pop() {
            if !seen.insert(next.clone()) {
                continue;
            }
            // An import that was not registered (none here) is left out:
            // the client then says which one it misses.
            if let Some((bytes, deps)) = self.files.get(&next) {
                order.push(bytes.clone());
                stack.extend(deps.iter().rev().cloned());
            } else if next == name {
                return None;
            }
        }
        Some(order)
    }

    fn answer(&self, request: v1::ServerReflectionRequest) -> v1::ServerReflectionResponse {
        let not_found = |what: String| {
            MessageResponse::ErrorResponse(v1::ErrorResponse {
                error_code: tonic::Code::NotFound as i32,
                error_message: what,
            })
        };
        let files = |name: &str, what: String| match self.with_dependencies(name) {
            Some(file_descriptor_proto) => {
                MessageResponse::FileDescriptorResponse(v1::FileDescriptorResponse {
                    file_descriptor_proto,
                })
            }
            None => not_found(what),
        };
        let response = match &request.message_request {
            Some(MessageRequest::FileByFilename(name)) => files(name, format!("file {name}")),
            Some(MessageRequest::FileContainingSymbol(symbol)) => match self.symbols.get(symbol) {
                Some(file) => files(file, format!("symbol {symbol}")),
                None => not_found(format!("symbol {symbol}")),
            },
            Some(MessageRequest::ListServices(_)) => {
                MessageResponse::ListServicesResponse(v1::ListServiceResponse {
                    service: self
                        .services
                        .iter()
                        .map(|name| v1::ServiceResponse { name: name.clone() })
                        .collect(),
                })
            }
            Some(MessageRequest::FileContainingExtension(e)) => not_found(format!(
                "extension {} of {} (no extensions are defined)",
                e.extension_number, e.containing_type
            )),
            Some(MessageRequest::AllExtensionNumbersOfType(t)) => {
                MessageResponse::AllExtensionNumbersResponse(v1::ExtensionNumberResponse {
                    base_type_name: t.clone(),
                    extension_number: Vec::new(),
                })
            }
            None => MessageResponse::ErrorResponse(v1::ErrorResponse {
                error_code: tonic::Code::InvalidArgument as i32,
                error_message: "empty reflection request".into(),
            }),
        };
        v1::ServerReflectionResponse {
            valid_host: request.host.clone(),
            original_request: Some(request),
            message_response: Some(response),
        }
    }
}

/// The reflection service, one index behind both protocol versions.
#[derive(Clone)]
pub(crate) struct Reflection(Arc<Index>);

impl Reflection {
    /// Reflects every file of these encoded descriptor sets.
    pub(crate) fn new(sets: &[&[u8]]) -> Result<Self, prost::DecodeError> {
        Ok(Self(Arc::new(Index::new(sets)?)))
    }

    /// The `grpc.reflection.v1` service.
    pub(crate) fn v1(&self) -> v1::server_reflection_server::ServerReflectionServer<Self> {
        v1::server_reflection_server::ServerReflectionServer::new(self.clone())
    }

    /// The `grpc.reflection.v1alpha` service.
    pub(crate) fn v1alpha(
        &self,
    ) -> v1alpha::server_reflection_server::ServerReflectionServer<V1Alpha> {
        v1alpha::server_reflection_server::ServerReflectionServer::new(V1Alpha(self.clone()))
    }
}

type Answers<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl ServerReflection for Reflection {
    type ServerReflectionInfoStream = Answers<v1::ServerReflectionResponse>;

    async fn server_reflection_info(
        &self,
        request: Request<Streaming<v1::ServerReflectionRequest>>,
    ) -> Result<Response<Self::ServerReflectionInfoStream>, Status> {
        let index = self.0.clone();
        let answers = request
            .into_inner()
            .map(move |request| request.map(|r| index.answer(r)));
        Ok(Response::new(Box::pin(answers)))
    }
}

/// `v1alpha` over the same index: its messages are the `v1` messages under
/// another package, byte for byte, so each is re-decoded as the other.
#[derive(Clone)]
pub(crate) struct V1Alpha(Reflection);

fn same_wire<A: Message, B: Message + Default>(message: &A) -> Result<B, Status> {
    B::decode(message.encode_to_vec().as_slice())
        .map_err(|e| Status::internal(format!("reflection v1alpha <-> v1: {e}")))
}

#[tonic::async_trait]
impl v1alpha::server_reflection_server::ServerReflection for V1Alpha {
    type ServerReflectionInfoStream = Answers<v1alpha::ServerReflectionResponse>;

    async fn server_reflection_info(
        &self,
        request: Request<Streaming<v1alpha::ServerReflectionRequest>>,
    ) -> Result<Response<Self::ServerReflectionInfoStream>, Status> {
        let index = self.0 .0.clone();
        let answers = request.into_inner().map(move |request| {
            let request: v1::ServerReflectionRequest = same_wire(&request?)?;
            same_wire(&index.answer(request))
        });
        Ok(Response::new(Box::pin(answers)))
    }
}
