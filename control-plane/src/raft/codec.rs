//! Framing of openraft and drover serde types in `raft.v1.RaftMessage` (postcard).

use drover_proto::RAFT_CODEC_POSTCARD;
use drover_proto::raft::RaftMessage;
use serde::{Serialize, de::DeserializeOwned};

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("unsupported raft message codec {0}")]
    UnknownCodec(u32),
    #[error("malformed raft message: {0}")]
    Malformed(#[from] postcard::Error),
}

pub fn encode<T: Serialize>(v: &T) -> Result<RaftMessage, CodecError> {
    Ok(RaftMessage { codec: RAFT_CODEC_POSTCARD, body: postcard::to_stdvec(v)? })
}

pub fn decode<T: DeserializeOwned>(m: &RaftMessage) -> Result<T, CodecError> {
    if m.codec != RAFT_CODEC_POSTCARD {
        return Err(CodecError::UnknownCodec(m.codec));
    }
    Ok(postcard::from_bytes(&m.body)?)
}

impl From<CodecError> for tonic::Status {
    fn from(e: CodecError) -> Self {
        tonic::Status::invalid_argument(e.to_string())
    }
}
