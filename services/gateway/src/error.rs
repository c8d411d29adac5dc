//! The gateway's one error enum and its one wire mapping: S3 error code + HTTP status +
//! message. Handlers return `Result<_, S3Error>`; rendering to XML (with resource and
//! request id) happens in one place (`S3Error::to_response`).

use http::StatusCode;

#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    #[error("The specified bucket does not exist")]
    NoSuchBucket,
    #[error("The specified key does not exist.")]
    NoSuchKey,
    #[error(
        "The specified upload does not exist. The upload ID may be invalid, or the upload may have been aborted or completed."
    )]
    NoSuchUpload,
    #[error(
        "The requested bucket name is not available. The bucket namespace is shared by all users of the system. Please select a different name and try again."
    )]
    BucketAlreadyExists,
    #[error("Your previous request to create the named bucket succeeded and you already own it.")]
    BucketAlreadyOwnedByYou,
    #[error("The bucket you tried to delete is not empty")]
    BucketNotEmpty,
    #[error("The specified bucket is not valid.")]
    InvalidBucketName,
    #[error(
        "The request signature we calculated does not match the signature you provided. Check your key and signing method."
    )]
    SignatureDoesNotMatch,
    #[error("The AWS Access Key Id you provided does not exist in our records.")]
    InvalidAccessKeyId,
    #[error("{0}")]
    AccessDenied(String),
    #[error("The difference between the request time and the current time is too large.")]
    RequestTimeTooSkewed,
    /// The error document names the range asked for and the object's size.
    #[error("The requested range is not satisfiable")]
    InvalidRange { size: u64, range: String },
    #[error("The requested partnumber is not satisfiable")]
    InvalidPartNumber,
    #[error("{0}")]
    InvalidTag(String),
    #[error("The TagSet does not exist")]
    NoSuchTagSet,
    #[error("The CORS configuration does not exist")]
    NoSuchCORSConfiguration,
    /// A CORS preflight refused: the message says why (S3's wording).
    #[error("CORSResponse: {0}")]
    CorsForbidden(&'static str),
    #[error("{0}")]
    BadRequest(String),
    #[error("The Content-MD5 you specified did not match what we received.")]
    BadDigest,
    /// A checksum (x-amz-checksum-*) did not match; the message names the algorithm.
    #[error("The {0} you specified did not match the calculated checksum.")]
    BadChecksum(&'static str),
    #[error("The Content-MD5 you specified is not valid.")]
    InvalidDigest,
    #[error("The provided 'x-amz-content-sha256' header does not match what was computed.")]
    XAmzContentSHA256Mismatch,
    #[error("You did not provide the number of bytes specified by the Content-Length HTTP header.")]
    IncompleteBody,
    /// The error document names the proposed and the allowed size, as S3's does.
    #[error("Your proposed upload exceeds the maximum allowed object size.")]
    EntityTooLarge { proposed: u64, max: u64 },
    #[error("Your proposed upload is smaller than the minimum allowed object size.")]
    EntityTooSmall { proposed: u64, min: u64 },
    #[error(
        "One or more of the specified parts could not be found. The part might not have been uploaded, or the specified entity tag might not have matched the part's entity tag."
    )]
    InvalidPart,
    #[error("The list of parts was not in ascending order. The parts list must be specified in order by part number.")]
    InvalidPartOrder,
    #[error("The XML you provided was not well-formed or did not validate against our published schema.")]
    MalformedXML,
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    InvalidRequest(String),
    #[error("Your key is too long")]
    KeyTooLongError,
    #[error("Your metadata headers exceed the maximum allowed metadata size.")]
    MetadataTooLarge,
    #[error("You must provide the Content-Length HTTP header.")]
    MissingContentLength,
    #[error("{0}")]
    AuthorizationHeaderMalformed(String),
    #[error("{0}")]
    AuthorizationQueryParametersError(String),
    #[error("The specified method is not allowed against this resource.")]
    MethodNotAllowed,
    #[error("{0} is not implemented by aether.")]
    NotImplemented(String),
    /// The condition that failed, as S3 names it in `<Condition>` (`If-Match`, …).
    #[error("At least one of the pre-conditions you specified did not hold")]
    PreconditionFailed(&'static str),
    #[error("A conflicting conditional operation is currently in progress against this resource. Try again.")]
    ConditionalRequestConflict,
    /// A conditional GET/HEAD whose condition says the client's copy is current (304).
    #[error("Not Modified")]
    NotModified,
    #[error("Reduce your request rate or retry: not enough storage nodes answered.")]
    ServiceUnavailable,
    #[error("We encountered an internal error. Please try again.")]
    InternalError(String),
}

impl S3Error {
    pub fn code(&self) -> &'static str {
        use S3Error::*;
        match self {
            NoSuchBucket => "NoSuchBucket",
            NoSuchKey => "NoSuchKey",
            NoSuchUpload => "NoSuchUpload",
            BucketAlreadyExists => "BucketAlreadyExists",
            BucketAlreadyOwnedByYou => "BucketAlreadyOwnedByYou",
            BucketNotEmpty => "BucketNotEmpty",
            InvalidBucketName => "InvalidBucketName",
            SignatureDoesNotMatch => "SignatureDoesNotMatch",
            InvalidAccessKeyId => "InvalidAccessKeyId",
            AccessDenied(_) => "AccessDenied",
            RequestTimeTooSkewed => "RequestTimeTooSkewed",
            InvalidRange { .. } => "InvalidRange",
            InvalidPartNumber => "InvalidPartNumber",
            InvalidTag(_) => "InvalidTag",
            NoSuchTagSet => "NoSuchTagSet",
            NoSuchCORSConfiguration => "NoSuchCORSConfiguration",
            CorsForbidden(_) => "AccessForbidden",
            BadRequest(_) => "BadRequest",
            BadDigest | BadChecksum(_) => "BadDigest",
            InvalidDigest => "InvalidDigest",
            XAmzContentSHA256Mismatch => "XAmzContentSHA256Mismatch",
            IncompleteBody => "IncompleteBody",
            EntityTooLarge { .. } => "EntityTooLarge",
            EntityTooSmall { .. } => "EntityTooSmall",
            InvalidPart => "InvalidPart",
            InvalidPartOrder => "InvalidPartOrder",
            MalformedXML => "MalformedXML",
            InvalidArgument(_) => "InvalidArgument",
            InvalidRequest(_) => "InvalidRequest",
            KeyTooLongError => "KeyTooLongError",
            MetadataTooLarge => "MetadataTooLarge",
            MissingContentLength => "MissingContentLength",
            AuthorizationHeaderMalformed(_) => "AuthorizationHeaderMalformed",
            AuthorizationQueryParametersError(_) => "AuthorizationQueryParametersError",
            MethodNotAllowed => "MethodNotAllowed",
            NotImplemented(_) => "NotImplemented",
            PreconditionFailed(_) => "PreconditionFailed",
            ConditionalRequestConflict => "ConditionalRequestConflict",
            NotModified => "NotModified",
            ServiceUnavailable => "ServiceUnavailable",
            InternalError(_) => "InternalError",
        }
    }

    pub fn status(&self) -> StatusCode {
        use S3Error::*;
        match self {
            NoSuchBucket | NoSuchKey | NoSuchUpload | NoSuchTagSet | NoSuchCORSConfiguration => StatusCode::NOT_FOUND,
            BucketAlreadyExists | BucketAlreadyOwnedByYou | BucketNotEmpty | ConditionalRequestConflict => {
                StatusCode::CONFLICT
            }
            SignatureDoesNotMatch | InvalidAccessKeyId | AccessDenied(_) | RequestTimeTooSkewed | CorsForbidden(_) => {
                StatusCode::FORBIDDEN
            }
            InvalidRange { .. } | InvalidPartNumber => StatusCode::RANGE_NOT_SATISFIABLE,
            MissingContentLength => StatusCode::LENGTH_REQUIRED,
            MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            PreconditionFailed(_) => StatusCode::PRECONDITION_FAILED,
            NotModified => StatusCode::NOT_MODIFIED,
            ServiceUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            InternalError(_) => StatusCode::INTERNAL_SERVER_ERROR,
            InvalidBucketName
            | BadDigest
            | BadChecksum(_)
            | InvalidDigest
            | XAmzContentSHA256Mismatch
            | IncompleteBody
            | EntityTooLarge { .. }
            | EntityTooSmall { .. }
            | InvalidPart
            | InvalidPartOrder
            | MalformedXML
            | InvalidArgument(_)
            | InvalidRequest(_)
            | KeyTooLongError
            | MetadataTooLarge
            | InvalidTag(_)
            | BadRequest(_)
            | AuthorizationHeaderMalformed(_)
            | AuthorizationQueryParametersError(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// The message a client sees. Internal details (the `InternalError` payload) are
    /// logged, never sent.
    pub fn message(&self) -> String {
        self.to_string()
    }

    pub fn is_server_error(&self) -> bool {
        self.status().is_server_error()
    }
}
