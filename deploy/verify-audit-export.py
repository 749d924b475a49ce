#!/usr/bin/python3
"""Verify a vBus KMS audit export with nothing but the README's description.

usage: verify-audit-export.py EXPORT.jsonl VERIFIER_KEY
Prints "OK <records> <newest checkpoint size>" or "BAD <seq> <why>" (exit 1).
Needs python3-cryptography (Ed25519) and the standard library only."""
import base64, hashlib, json, sys
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

def main(path, vkey):
    name, khash, key = vkey.strip().split("+", 2)
    key = base64.b64decode(key)
    assert key[0] == 1 and hashlib.sha256(name.encode() + b"\n" + key).digest()[:4].hex() == khash
    pub = Ed25519PublicKey.from_public_bytes(key[1:])
    prev, n, heads, cp_size = bytes(32), 0, {}, 0
    for line in open(path, encoding="utf-8"):
        obj = json.loads(line)
        if "seq" in obj:
            seq, body = obj["seq"], obj["body"].encode()
            h = hashlib.sha256(prev + body).digest()
            if seq != n + 1 or h.hex() != obj["hash"] or json.loads(body)["seq"] != seq:
                return f"BAD {n + 1} chain"
            prev, n, heads[seq] = h, seq, h
        else:
            text, sigs = obj["checkpoint"].split("\n\n", 1)
            blob = base64.b64decode(sigs.split(" ")[-1])
            try:
                pub.verify(blob[4:], (text + "\n").encode())
            except Exception:
                return f"BAD {n} checkpoint signature"
            origin, size, head = text.split("\n")[:3]
            size = int(size)
            if blob[:4].hex() != khash or origin != name or size > n or size < cp_size or base64.b64decode(head) != heads.get(size):
                return f"BAD {size} checkpoint"
            cp_size = size
    return f"OK {n} {cp_size}"

if __name__ == "__main__":
    verdict = main(sys.argv[1], sys.argv[2])
    print(verdict)
    sys.exit(0 if verdict.startswith("OK") else 1)
