//! Direct methods (S-5): handler types.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use iothub_spec::code::method_code;
use serde_json::Value;

/// A direct-method call (S-5.1) handed to a handler registered with
/// [`crate::ThingOptions::on_method`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct MethodRequest {
    /// The method name.
    pub method: String,
    /// The call's `data` (`Value::Null` when it had none).
    pub data: Value,
    pub(crate) thing: Option<crate::Thing>,
}

impl MethodRequest {
    /// The connected thing, to report state or send telemetry from the handler (`None` only
    /// while the thing is being closed).
    pub fn thing(&self) -> Option<&crate::Thing> {
        self.thing.as_ref()
    }
}

/// A handler's failure, answered with its code (S-5.2: 400 bad input, 500 device error, or
/// any other code the device chooses).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("method failed with {code}: {message}")]
pub struct MethodError {
    /// The response code.
    pub code: u16,
    /// The response message.
    pub message: String,
    /// Optional response data.
    pub data: Option<Value>,
}

impl MethodError {
    /// A failure with `code` and `message`.
    pub fn new(code: u16, message: impl Into<String>) -> Self {
        MethodError {
            code,
            message: message.into(),
            data: None,
        }
    }

    /// 400: the call's data is not acceptable.
    pub fn bad_input(message: impl Into<String>) -> Self {
        MethodError::new(method_code::BAD_INPUT, message)
    }

    /// 500: the device failed.
    pub fn device(message: impl Into<String>) -> Self {
        MethodError::new(method_code::DEVICE_ERROR, message)
    }

    /// Adds response data.
    pub fn with_data(mut self, data: Value) -> Self {
        self.data = Some(data);
        self
    }
}

/// What a handler returns: `Ok(data)` is answered 200 with `data`.
pub type MethodResult = Result<Value, MethodError>;

pub(crate) type BoxFuture = Pin<Box<dyn Future<Output = MethodResult> + Send>>;
pub(crate) type Handler = Arc<dyn Fn(MethodRequest) -> BoxFuture + Send + Sync>;
