//! Compute kernels shared by the Linux agent and the bare lab guest.
//!
//! This module must build with `core` alone: the bare guest links it.
//! No allocation, no floating point, no std.

/// SHA-256 round constants (FIPS 180-4 §4.2.2).
const K: [u32; 64] = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
];

/// A streaming SHA-256 (the `cpu` scenario's kernel).
#[derive(Clone)]
pub struct Sha256 {
    state: [u32; 8],
    block: [u8; 64],
    filled: usize,
    length: u64,
}

impl Default for Sha256 {
    fn default() -> Self {
        Self::new()
    }
}

impl Sha256 {
    pub const fn new() -> Self {
        Sha256 {
            state: [
                0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
                0x5be0cd19,
            ],
            block: [0; 64],
            filled: 0,
            length: 0,
        }
    }

    fn compress(state: &mut [u32; 8], block: &[u8; 64]) {
        let mut w = [0u32; 64];
        for (i, chunk) in block.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16]
                .wrapping_add(s0)
                .wrapping_add(w[i - 7])
                .wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut h] = *state;
        for i in 0..64 {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = h
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(K[i])
                .wrapping_add(w[i]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            h = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b;
            b = a;
            a = t1.wrapping_add(t2);
        }
        for (s, v) in state.iter_mut().zip([a, b, c, d, e, f, g, h]) {
            *s = s.wrapping_add(v);
        }
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.length = self.length.wrapping_add(data.len() as u64);
        while !data.is_empty() {
            let take = core::cmp::min(64 - self.filled, data.len());
            self.block[self.filled..self.filled + take].copy_from_slice(&data[..take]);
            self.filled += take;
            data = &data[take..];
            if self.filled == 64 {
                Self::compress(&mut self.state, &self.block);
                self.filled = 0;
            }
        }
    }

    pub fn finish(mut self) -> [u8; 32] {
        let bits = self.length.wrapping_mul(8);
        self.update(&[0x80]);
        while self.filled != 56 {
            self.update(&[0]);
        }
        self.update(&bits.to_be_bytes());
        let mut out = [0u8; 32];
        for (o, s) in out.chunks_exact_mut(4).zip(self.state) {
            o.copy_from_slice(&s.to_be_bytes());
        }
        out
    }
}

/// The index of the `p`th percentile in `len` sorted values: the agent and
/// the bare guest pick their medians and p99s the same way.
pub const fn percentile_index(len: usize, p: usize) -> usize {
    if len == 0 {
        return 0;
    }
    let i = ((len - 1) * p).div_ceil(100);
    if i < len {
        i
    } else {
        len - 1
    }
}

/// `net-stream` over UDP (the bare guest, which has no TCP): a request
/// to the host's server is this magic, a little-endian `u32` window and a
/// `u64` first sequence number; the server answers with `window`
/// datagrams of [`STREAM_DATAGRAM`] bytes, each starting with its
/// sequence number (little endian).
pub const STREAM_MAGIC: [u8; 8] = *b"isostrm1";
/// A stream datagram's payload: the most one 1514-byte Ethernet frame
/// carries (1500 − 20 IPv4 − 8 UDP).
pub const STREAM_DATAGRAM: usize = 1472;
/// The largest window the server sends for one request.
pub const STREAM_MAX_WINDOW: u32 = 64;

/// A stream request's window (capped at [`STREAM_MAX_WINDOW`]) and first
/// sequence number, or None if `b` is not one.
pub fn stream_request(b: &[u8]) -> Option<(u32, u64)> {
    if b.len() < 20 || b[..8] != STREAM_MAGIC {
        return None;
    }
    let window = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&b[12..20]);
    Some((window.min(STREAM_MAX_WINDOW), u64::from_le_bytes(seq)))
}

/// The `cpu` scenario's work unit: SHA-256 over `blocks` 64-byte blocks of
/// a fixed generated pattern, chained so no work can be skipped. Returns
/// the final digest's first 8 bytes as a checksum the harness can verify.
pub fn cpu_work(blocks: u64) -> u64 {
    let mut h = Sha256::new();
    let mut buf = [0u8; 64];
    let mut x: u32 = 0x1234_5678;
    for i in 0..blocks {
        for b in buf.iter_mut() {
            // xorshift32: cheap, deterministic input.
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            *b = x as u8;
        }
        buf[0] ^= i as u8;
        h.update(&buf);
    }
    let d = h.finish();
    u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

/// Start value of [`word_checksum`].
pub const CHECKSUM_SEED: u64 = 0xcbf2_9ce4_8422_2325;

/// A fast 64-bit checksum: FNV-1a's step over little-endian 8-byte words
/// (a short tail is zero-padded). The bare guest runs it over the bytes it
/// read from its virtio disk and the host over the image file, so the two
/// can be compared; it costs little next to the reads it checks.
pub fn word_checksum(mut h: u64, data: &[u8]) -> u64 {
    let mut words = data.chunks_exact(8);
    for w in &mut words {
        let v = u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
        h = (h ^ v).wrapping_mul(0x0000_0100_0000_01b3);
    }
    let rest = words.remainder();
    if !rest.is_empty() {
        let mut w = [0u8; 8];
        w[..rest.len()].copy_from_slice(rest);
        h = (h ^ u64::from_le_bytes(w)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Checksum `cpu_work(CPU_CHECK_BLOCKS)` must give on every backend.
pub const CPU_CHECK_BLOCKS: u64 = 1000;

/// Writes `value` in decimal into `out`, returning the used prefix
/// (no_std formatting for the bare guest).
pub fn fmt_u64(mut value: u64, out: &mut [u8; 20]) -> &[u8] {
    let mut i = out.len();
    loop {
        i -= 1;
        out[i] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    &out[i..]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(d: &[u8]) -> String {
        d.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn stream_requests_parse_and_their_window_is_capped() {
        let mut b = [0u8; 20];
        b[..8].copy_from_slice(&STREAM_MAGIC);
        b[8..12].copy_from_slice(&32u32.to_le_bytes());
        b[12..20].copy_from_slice(&77u64.to_le_bytes());
        assert_eq!(stream_request(&b), Some((32, 77)));
        b[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(stream_request(&b), Some((STREAM_MAX_WINDOW, 77)));
        assert_eq!(stream_request(&b[..19]), None, "too short");
        b[0] = b'X';
        assert_eq!(stream_request(&b), None, "no magic");
        // An agent's ping (its sequence number first) is never a request.
        let mut ping = [0u8; 32];
        ping[..8].copy_from_slice(&5u64.to_le_bytes());
        assert_eq!(stream_request(&ping), None);
    }

    #[test]
    fn word_checksum_chains_and_sees_every_word() {
        let data: Vec<u8> = (0..4096u32).map(|i| (i * 31) as u8).collect();
        let whole = word_checksum(CHECKSUM_SEED, &data);
        // In 512-byte pieces (as the guest reads sectors) it is the same.
        let pieces = data.chunks(512).fold(CHECKSUM_SEED, word_checksum);
        assert_eq!(whole, pieces);
        let mut flipped = data.clone();
        flipped[4000] ^= 1;
        assert_ne!(word_checksum(CHECKSUM_SEED, &flipped), whole);
        assert_ne!(word_checksum(CHECKSUM_SEED, &data[..4088]), whole);
        assert_eq!(word_checksum(CHECKSUM_SEED, &[]), CHECKSUM_SEED);
    }

    #[test]
    fn sha256_known_answers() {
        assert_eq!(
            hex(&Sha256::new().finish()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let mut h = Sha256::new();
        h.update(b"abc");
        assert_eq!(
            hex(&h.finish()),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn sha256_matches_the_sha2_crate_on_odd_lengths() {
        use sha2::Digest;
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
        for len in [0, 1, 55, 56, 63, 64, 65, 127, 128, 999] {
            let mut h = Sha256::new();
            // Feed in uneven pieces to exercise buffering.
            for piece in data[..len].chunks(13) {
                h.update(piece);
            }
            assert_eq!(
                h.finish().as_slice(),
                sha2::Sha256::digest(&data[..len]).as_slice(),
                "len {len}"
            );
        }
    }

    #[test]
    fn cpu_work_is_deterministic_and_depends_on_size() {
        assert_eq!(cpu_work(CPU_CHECK_BLOCKS), cpu_work(CPU_CHECK_BLOCKS));
        assert_ne!(cpu_work(1), cpu_work(2));
    }

    #[test]
    fn decimal_formatting() {
        let mut b = [0; 20];
        assert_eq!(fmt_u64(0, &mut b), b"0");
        assert_eq!(fmt_u64(u64::MAX, &mut b), b"18446744073709551615");
        assert_eq!(fmt_u64(1200, &mut b), b"1200");
    }
}
