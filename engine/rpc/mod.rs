//! JSON-RPC 2.0 control: a registry of named methods and the Unix-socket
//! server that frames requests as SPDK does (a stream of JSON values with no
//! delimiter; each request answered in order).
//!
//! Methods keep SPDK's names and parameters where SPDK has the method, so
//! SPDK's own client (`spdk_rpc`) works for that subset. A method runs in a
//! coroutine and may park (call the meta service, wait for I/O).

pub mod server;
pub mod spdk;

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, RwLock};

/// JSON-RPC error codes (the standard ones SPDK uses too).
pub mod codes {
    pub const PARSE_ERROR: i32 = -32700;
    pub const INVALID_REQUEST: i32 = -32600;
    pub const METHOD_NOT_FOUND: i32 = -32601;
    pub const INVALID_PARAMS: i32 = -32602;
    pub const INTERNAL_ERROR: i32 = -32603;
}

/// An error answer: a JSON-RPC code and a message that says what was wrong
/// (which parameter, which volume, ...). Like SPDK, failures of the
/// operation itself use negative errno values (`-libc::ENOENT`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcError {
    pub code: i32,
    pub message: String,
}

impl RpcError {
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// `-32602 Invalid parameters`, with what was wrong.
    pub fn invalid_params(message: impl Into<String>) -> Self {
        Self::new(codes::INVALID_PARAMS, message)
    }

    /// A failed operation, SPDK style: a negative errno and a message.
    pub fn errno(errno: i32, message: impl Into<String>) -> Self {
        Self::new(-errno.abs(), message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(codes::INTERNAL_ERROR, message)
    }
}

impl fmt::Display for RpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (code {})", self.message, self.code)
    }
}

impl std::error::Error for RpcError {}

/// A method: takes the request's `params` (absent → `None`) and returns the
/// `result` value. Runs in a coroutine on a reactor.
pub type Method = Arc<dyn Fn(Option<Value>) -> Result<Value, RpcError> + Send + Sync>;

/// The set of methods a socket serves.
#[derive(Default)]
pub struct Registry {
    methods: RwLock<BTreeMap<String, Method>>,
}

impl Registry {
    pub fn new() -> Arc<Self> {
        let r = Arc::new(Self::default());
        let weak = Arc::downgrade(&r);
        r.register("rpc_get_methods", move |_| {
            let names = weak.upgrade().map(|r| r.names()).unwrap_or_default();
            Ok(json!(names))
        });
        r
    }

    /// Adds (or replaces) a method.
    pub fn register(
        &self,
        name: &str,
        f: impl Fn(Option<Value>) -> Result<Value, RpcError> + Send + Sync + 'static,
    ) {
        self.methods
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), Arc::new(f));
    }

    pub fn get(&self, name: &str) -> Option<Method> {
        self.methods
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// Every method name, sorted.
    pub fn names(&self) -> Vec<String> {
        self.methods
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    /// Calls a method by name (the server does this for each request).
    pub fn call(&self, name: &str, params: Option<Value>) -> Result<Value, RpcError> {
        match self.get(name) {
            Some(m) => m(params),
            None => Err(RpcError::new(
                codes::METHOD_NOT_FOUND,
                format!("Method not found: {name}"),
            )),
        }
    }
}

/// Decodes `params` into `T` (a serde struct with SPDK's field names), with
/// a message naming what is missing or wrong.
pub fn parse_params<T: serde::de::DeserializeOwned>(params: Option<Value>) -> Result<T, RpcError> {
    let v = params.unwrap_or(Value::Object(Default::default()));
    serde_json::from_value(v)
        .map_err(|e| RpcError::invalid_params(format!("Invalid parameters: {e}")))
}
