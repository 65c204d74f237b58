//! The gRPC codec of every Diplo service and client: prost's encoding, with small buffers
//! allocated up front.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Bytes each call's encoder and decoder allocate up front (tonic's default is 8 KiB).
/// Every node keeps one session stream open, so the control plane holds one decoder
/// and one encoder per connected node: at 10,000 nodes the default costs 160 MiB that
/// heartbeats of a few hundred bytes never fill. A larger message makes its buffer grow
/// to fit it, so nothing is limited by this.
pub const BUFFER_BYTES: usize = 1024;

/// Encoded bytes after which a streaming encoder yields to send them (tonic's default).
const YIELD_THRESHOLD: usize = 32 * 1024;

fn buffer_settings() -> BufferSettings {
    BufferSettings::new(BUFFER_BYTES, YIELD_THRESHOLD)
}

/// [`ProstCodec`] with [`BUFFER_BYTES`] buffers; the generated code uses it for every
/// service and client of `diplo.v1`.
#[derive(Debug, Clone)]
pub struct DiploCodec<T, U> {
    _types: PhantomData<(T, U)>,
}

impl<T, U> Default for DiploCodec<T, U> {
    fn default() -> Self {
        DiploCodec { _types: PhantomData }
    }
}

impl<T, U> Codec for DiploCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(buffer_settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(buffer_settings())
    }
}

#[cfg(test)]
mod tests {
    use tonic::codec::{Decoder, Encoder};

    use super::*;
    use crate::pb;

    #[test]
    fn buffers_start_small() {
        let mut codec = DiploCodec::<pb::AgentMessage, pb::ControlMessage>::default();
        // The settings expose their fields only through Debug.
        let expected = format!("buffer_size: {BUFFER_BYTES},");
        const { assert!(BUFFER_BYTES <= 1024, "one encoder and one decoder per connected node") };
        for settings in [codec.encoder().buffer_settings(), codec.decoder().buffer_settings()] {
            assert!(format!("{settings:?}").contains(&expected), "{settings:?}");
        }
    }
}
