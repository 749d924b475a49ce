//! The manifest, its binary layout (see the crate documentation) and the
//! strict decoder. Uses only `core` and `alloc`.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use sha2::Digest as _;

use crate::Error;

/// The first four bytes of every manifest.
pub const MAGIC: [u8; 4] = *b"VBFW";
/// The layout version this crate writes and reads.
pub const LAYOUT_VERSION: u8 = 1;
/// The longest product and version, in bytes (both are at least 1 byte).
pub const MAX_NAME: usize = 64;
/// The length of a signature, for both algorithms (Ed25519 R‖S, P-256 r‖s).
pub const SIGNATURE_LEN: usize = 64;
/// The length of a key id (SHA-256).
pub const KEY_ID_LEN: usize = 32;

/// The fixed part before the digest: magic, layout version, the two
/// algorithm bytes, reserved, security version, signing time, key id and
/// the digest length byte.
const FIXED_LEN: usize = 53;

/// How the manifest is signed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SignatureAlgorithm {
    /// Pure Ed25519 (RFC 8032) over the signed bytes. Wire number 1.
    Ed25519,
    /// ECDSA on P-256 over SHA-256 of the signed bytes, signature `r‖s`.
    /// Wire number 2.
    EcdsaP256Sha256,
}

impl SignatureAlgorithm {
    /// The number in the layout (1 or 2).
    pub fn wire(self) -> u8 {
        match self {
            SignatureAlgorithm::Ed25519 => 1,
            SignatureAlgorithm::EcdsaP256Sha256 => 2,
        }
    }

    /// The algorithm with layout number `n`, if there is one.
    pub fn from_wire(n: u8) -> Option<Self> {
        match n {
            1 => Some(SignatureAlgorithm::Ed25519),
            2 => Some(SignatureAlgorithm::EcdsaP256Sha256),
            _ => None,
        }
    }

    /// The name in the JSON form: `ed25519` or `ecdsa-p256-sha256`.
    pub fn as_str(self) -> &'static str {
        match self {
            SignatureAlgorithm::Ed25519 => "ed25519",
            SignatureAlgorithm::EcdsaP256Sha256 => "ecdsa-p256-sha256",
        }
    }

    /// The algorithm named exactly `name` (as [`SignatureAlgorithm::as_str`]).
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "ed25519" => Some(SignatureAlgorithm::Ed25519),
            "ecdsa-p256-sha256" => Some(SignatureAlgorithm::EcdsaP256Sha256),
            _ => None,
        }
    }
}

impl fmt::Display for SignatureAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the image is digested.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DigestAlgorithm {
    /// SHA-256, 32 bytes. Wire number 1.
    Sha256,
    /// SHA-512, 64 bytes. Wire number 2.
    Sha512,
}

impl DigestAlgorithm {
    /// The number in the layout (1 or 2).
    pub fn wire(self) -> u8 {
        match self {
            DigestAlgorithm::Sha256 => 1,
            DigestAlgorithm::Sha512 => 2,
        }
    }

    /// The algorithm with layout number `n`, if there is one.
    pub fn from_wire(n: u8) -> Option<Self> {
        match n {
            1 => Some(DigestAlgorithm::Sha256),
            2 => Some(DigestAlgorithm::Sha512),
            _ => None,
        }
    }

    /// The digest length in bytes: 32 or 64.
    pub fn output_len(self) -> usize {
        match self {
            DigestAlgorithm::Sha256 => 32,
            DigestAlgorithm::Sha512 => 64,
        }
    }

    /// The name in the JSON form: `sha256` or `sha512`.
    pub fn as_str(self) -> &'static str {
        match self {
            DigestAlgorithm::Sha256 => "sha256",
            DigestAlgorithm::Sha512 => "sha512",
        }
    }

    /// The algorithm named exactly `name` (as [`DigestAlgorithm::as_str`]).
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "sha256" => Some(DigestAlgorithm::Sha256),
            "sha512" => Some(DigestAlgorithm::Sha512),
            _ => None,
        }
    }

    /// The digest of `data` held in memory (for a large image on a host,
    /// see `digest_reader`, which streams).
    pub fn digest(self, data: &[u8]) -> Vec<u8> {
        match self {
            DigestAlgorithm::Sha256 => sha2::Sha256::digest(data).to_vec(),
            DigestAlgorithm::Sha512 => sha2::Sha512::digest(data).to_vec(),
        }
    }

    /// `Ok` when `digest` has this algorithm's length.
    pub(crate) fn check_len(self, got: usize) -> Result<(), Error> {
        let expected = self.output_len();
        if got == expected {
            Ok(())
        } else {
            Err(Error::DigestLength { expected, got })
        }
    }
}

impl fmt::Display for DigestAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the appliance signs about one firmware image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    /// The product the image is for: 1–64 bytes of `[A-Za-z0-9._-]`.
    pub product: String,
    /// The image's version: 1–64 bytes of printable ASCII without space.
    pub version: String,
    /// The anti-rollback counter: a device refuses a manifest whose
    /// security version is below its stored minimum.
    pub security_version: u32,
    /// How the image was digested.
    pub digest_algorithm: DigestAlgorithm,
    /// The image's digest (32 bytes for SHA-256, 64 for SHA-512).
    pub digest: Vec<u8>,
    /// SHA-256 of the signing key's raw public key ([`crate::key_id`]).
    pub key_id: [u8; KEY_ID_LEN],
    /// How the manifest is signed.
    pub signature_algorithm: SignatureAlgorithm,
    /// When it was signed, unix seconds UTC.
    pub signing_time: u64,
}

impl Manifest {
    /// Checks the product, the version and the digest length.
    pub fn validate(&self) -> Result<(), Error> {
        check_product(self.product.as_bytes())?;
        check_version(self.version.as_bytes())?;
        self.digest_algorithm.check_len(self.digest.len())
    }

    /// Exactly the bytes the signature covers: the layout up to and
    /// including the version (everything but the signature).
    pub fn to_be_signed(&self) -> Result<Vec<u8>, Error> {
        self.validate()?;
        let mut out = Vec::with_capacity(
            FIXED_LEN
                + self.digest.len()
                + 2
                + self.product.len()
                + self.version.len()
                + SIGNATURE_LEN,
        );
        out.extend_from_slice(&MAGIC);
        out.push(LAYOUT_VERSION);
        out.push(self.signature_algorithm.wire());
        out.push(self.digest_algorithm.wire());
        out.push(0);
        out.extend_from_slice(&self.security_version.to_be_bytes());
        out.extend_from_slice(&self.signing_time.to_be_bytes());
        out.extend_from_slice(&self.key_id);
        push_prefixed(&mut out, &self.digest)?;
        push_prefixed(&mut out, self.product.as_bytes())?;
        push_prefixed(&mut out, self.version.as_bytes())?;
        Ok(out)
    }

    /// The whole signed manifest: [`Manifest::to_be_signed`] followed by
    /// `signature`, which must be 64 bytes (Ed25519 R‖S, or P-256 r‖s).
    pub fn encode(&self, signature: &[u8]) -> Result<Vec<u8>, Error> {
        if signature.len() != SIGNATURE_LEN {
            return Err(Error::Malformed("signature must be 64 bytes"));
        }
        let mut out = self.to_be_signed()?;
        out.extend_from_slice(signature);
        Ok(out)
    }
}

/// A manifest with its signature, as decoded (not yet verified: see
/// [`crate::verify`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedManifest {
    /// The signed fields.
    pub manifest: Manifest,
    /// The signature over `manifest.to_be_signed()`.
    pub signature: [u8; SIGNATURE_LEN],
}

impl SignedManifest {
    /// The binary form: `manifest.encode(&signature)`.
    pub fn encode(&self) -> Result<Vec<u8>, Error> {
        self.manifest.encode(&self.signature)
    }
}

/// Appends a one-byte length and `bytes` (at most 255 bytes).
fn push_prefixed(out: &mut Vec<u8>, bytes: &[u8]) -> Result<(), Error> {
    let len = u8::try_from(bytes.len()).map_err(|_| Error::Malformed("field too long"))?;
    out.push(len);
    out.extend_from_slice(bytes);
    Ok(())
}

fn check_product(p: &[u8]) -> Result<(), Error> {
    let ok = (1..=MAX_NAME).contains(&p.len())
        && p.iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidProduct)
    }
}

fn check_version(v: &[u8]) -> Result<(), Error> {
    let ok = (1..=MAX_NAME).contains(&v.len()) && v.iter().all(|b| (0x21..=0x7e).contains(b));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidVersion)
    }
}

/// A cursor over the input that never reads past its end.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, truncated: &'static str) -> Result<&'a [u8], Error> {
        let (head, tail) = self
            .rest
            .split_at_checked(n)
            .ok_or(Error::Malformed(truncated))?;
        self.rest = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, truncated: &'static str) -> Result<[u8; N], Error> {
        <[u8; N]>::try_from(self.take(N, truncated)?).map_err(|_| Error::Malformed(truncated))
    }

    fn byte(&mut self, truncated: &'static str) -> Result<u8, Error> {
        let [b] = self.array::<1>(truncated)?;
        Ok(b)
    }

    /// A length byte (1..=64, else `invalid`), then that many bytes,
    /// checked by `check`.
    fn name(
        &mut self,
        truncated: &'static str,
        invalid: Error,
        check: fn(&[u8]) -> Result<(), Error>,
    ) -> Result<String, Error> {
        let len = usize::from(self.byte(truncated)?);
        if !(1..=MAX_NAME).contains(&len) {
            return Err(invalid);
        }
        let bytes = self.take(len, truncated)?;
        check(bytes)?;
        // ASCII by the check above.
        core::str::from_utf8(bytes)
            .map(String::from)
            .map_err(|_| invalid)
    }
}

/// Decodes a signed manifest strictly (see the crate documentation): magic,
/// layout version, known algorithms, reserved byte 0, a digest length that
/// matches the algorithm, valid product and version, exactly 64 signature
/// bytes and nothing after them. Fields are checked in layout order, so
/// the error is about the first bad field. It does not verify the
/// signature: use [`crate::verify`] or [`crate::verify_image`].
pub fn decode(bytes: &[u8]) -> Result<SignedManifest, Error> {
    let mut r = Reader { rest: bytes };
    if r.array::<4>("truncated in the magic")? != MAGIC {
        return Err(Error::Malformed("magic is not \"VBFW\""));
    }
    if r.byte("truncated before the layout version")? != LAYOUT_VERSION {
        return Err(Error::Malformed("layout version is not 1"));
    }
    let n = r.byte("truncated before the signature algorithm")?;
    let signature_algorithm =
        SignatureAlgorithm::from_wire(n).ok_or(Error::UnsupportedAlgorithm(n))?;
    let n = r.byte("truncated before the digest algorithm")?;
    let digest_algorithm = DigestAlgorithm::from_wire(n).ok_or(Error::UnsupportedAlgorithm(n))?;
    if r.byte("truncated before the reserved byte")? != 0 {
        return Err(Error::Malformed("reserved byte is not 0"));
    }
    let security_version = u32::from_be_bytes(r.array("truncated in the security version")?);
    let signing_time = u64::from_be_bytes(r.array("truncated in the signing time")?);
    let key_id = r.array::<KEY_ID_LEN>("truncated in the key id")?;
    let digest_len = usize::from(r.byte("truncated before the digest length")?);
    digest_algorithm.check_len(digest_len)?;
    let digest = r.take(digest_len, "truncated in the digest")?.to_vec();
    let product = r.name(
        "truncated in the product",
        Error::InvalidProduct,
        check_product,
    )?;
    let version = r.name(
        "truncated in the version",
        Error::InvalidVersion,
        check_version,
    )?;
    let signature = match r.rest.len() {
        SIGNATURE_LEN => r.array::<SIGNATURE_LEN>("truncated in the signature")?,
        n if n < SIGNATURE_LEN => return Err(Error::Malformed("truncated in the signature")),
        _ => return Err(Error::Malformed("trailing bytes after the signature")),
    };
    let manifest = Manifest {
        product,
        version,
        security_version,
        digest_algorithm,
        digest,
        key_id,
        signature_algorithm,
        signing_time,
    };
    manifest.validate()?;
    Ok(SignedManifest {
        manifest,
        signature,
    })
}
