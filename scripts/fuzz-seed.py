#!/usr/bin/env python3
"""Seeds the fuzz corpora (fuzz/corpus/TARGET/) from the real Parsec fixture exports.

Run with the interop venv's python (it has `parsec._parsec` for the secretbox, `cryptography`
for RSA-OAEP, `msgpack`):
    /var/tmp/parsec-oracle-venv/bin/python scripts/fuzz-seed.py [../shared]
Certificates are taken as stored (envelope after the 64-byte signature, or the RSA-armored row);
keys-bundle accesses, keys bundles and manifests are decrypted with the fixture service keys.
Operator-file seeds (PEM, URIs, plans) come from the fixtures, the docs and the test
vectors of docs/formats.md §10.
Files are named by their SHA-256 (as libFuzzer does), so re-running adds nothing twice.
"""
import glob
import hashlib
import os
import sqlite3
import sys

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from parsec._parsec import SecretKey

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(REPO, "..", "shared"))
sys.path.insert(0, os.path.join(SHARED, "interop"))
from oracle_lib import derive_key  # noqa: E402

CORPUS = os.path.join(REPO, "fuzz", "corpus")
OAEP_NAME = b"RSAES-OAEP-SHA256-XSALSA20-POLY1305:"
counts = {}


def put(target, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, hashlib.sha256(data).hexdigest()[:40])
    if not os.path.exists(path):
        with open(path, "wb") as f:
            f.write(data)
        counts[target] = counts.get(target, 0) + 1


def service_keys():
    keys = []
    for p in sorted(glob.glob(os.path.join(SHARED, "fixtures/parsec/sequester_service_*.private.pem"))):
        with open(p, "rb") as f:
            keys.append(serialization.load_pem_private_key(f.read(), password=None))
    return keys


def oaep_open(keys, armored):
    assert armored.startswith(OAEP_NAME)
    rest = armored[len(OAEP_NAME):]
    for key in keys:
        k = key.key_size // 8
        try:
            ek = key.decrypt(
                rest[:k],
                padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None),
            )
            return SecretKey(ek).decrypt(rest[k:])
        except Exception:
            continue
    return None


def one_export(path, keys):
    db = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True)
    q = lambda sql: db.execute(sql).fetchall()  # noqa: E731
    for (blob,) in q("SELECT certificate FROM common_certificate ORDER BY _id"):
        put("common_certificate", blob[64:])
        put("envelope", blob[64:])
    for (blob,) in q("SELECT certificate FROM realm_certificate ORDER BY _id"):
        put("realm_certificate", blob[64:])
    for i, (blob,) in enumerate(q("SELECT certificate FROM sequester_certificate ORDER BY _id")):
        if i == 0:
            put("sequester_certificate", blob[64:])
        else:
            put("sequester_certificate", blob)
            put("rsa_armor", blob)
    bundle_keys = {}
    for key_index, access in q("SELECT key_index, access FROM realm_sequester_keys_bundle_access"):
        put("rsa_armor", access)
        clear = oaep_open(keys, access)
        if clear is not None:
            put("keys_bundle_access", clear)
            # keys_bundle_key is the last 32 bytes of the bin in this two-field map
            bundle_keys[key_index] = clear
    realm_keys = {}
    for key_index, blob in q("SELECT key_index, keys_bundle FROM realm_keys_bundle"):
        access = bundle_keys.get(key_index)
        if access is None:
            continue
        import msgpack
        import zstandard

        access_obj = msgpack.unpackb(zstandard.ZstdDecompressor().decompressobj().decompress(access[1:]))
        signed = SecretKey(access_obj["keys_bundle_key"]).decrypt(blob)
        put("keys_bundle", signed[64:])
        bundle = msgpack.unpackb(zstandard.ZstdDecompressor().decompressobj().decompress(signed[65:]))
        for i, k in enumerate(bundle["keys"]):
            realm_keys[i + 1] = k
    for vlob_id, key_index, blob in q("SELECT vlob_id, key_index, blob FROM vlob_atom"):
        k = realm_keys.get(key_index)
        if k is None:
            continue
        signed = derive_key(k, vlob_id).decrypt(blob)
        put("manifest", signed[64:])
        put("envelope", signed[64:])


def operator_files():
    for p in glob.glob(os.path.join(SHARED, "fixtures/parsec/*.public.pem")):
        with open(p, "rb") as f:
            pem = f.read()
        put("pem", pem)
        der = serialization.load_pem_public_key(pem).public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        put("spki_der", der)
    for p in glob.glob(os.path.join(SHARED, "fixtures/parsec/*.pem")) + glob.glob(
        os.path.join(REPO, "tests", "**", "*.pem"), recursive=True
    ):
        with open(p, "rb") as f:
            text = f.read()
        if b"PRIVATE" not in text and (b"CERTIFICATE" in text or b"PUBLIC" in text):
            put("pem", text)
    for uri in [
        b"pkcs11:token=Sequester%20HSM;object=service-1;type=private",
        b"pkcs11:model=SoftHSM%20v2;manufacturer=SoftHSM%20project;serial=1234;token=t;id=%01%02;object=k",
        b"pkcs11:token=t;object=k?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/run/pin",
        b"pkcs11:slot-id=0;object=k?pin-value=1234",
        b"pkcs11:library-manufacturer=Kryoptic;library-description=x;library-version=1.5;slot-description=s;slot-manufacturer=m",
    ]:
        put("pkcs11_uri", uri)
    for uri in [
        b"yubikey:serial=12345678;slot=9d",
        b"yubikey:serial=12345678",
        b"yubikey:slot=82?pin-source=file:/run/pin",
        b"yubikey:serial=1;slot=95?pin-policy=always&touch-policy=cached",
    ]:
        put("yubikey_uri", uri)
    # Ceremony plans: the TOML examples of the docs and tests.
    import re

    for p in glob.glob(os.path.join(REPO, "docs", "*.md")) + glob.glob(os.path.join(REPO, "tests", "*.rs")):
        with open(p, encoding="utf-8") as f:
            text = f.read()
        for block in re.findall(r"```toml\n(.*?)```", text, re.S):
            if "[[step]]" in block:
                put("ceremony_plan", block.encode())
        for block in re.findall(r'r#"(.*?)"#', text, re.S):
            if "[[step]]" in block:
                put("ceremony_plan", block.encode())


def main():
    keys = service_keys()
    for path in sorted(glob.glob(os.path.join(SHARED, "fixtures/parsec/*.sqlite"))):
        one_export(path, keys)
    operator_files()
    for t, n in sorted(counts.items()):
        print(f"{t}: {n} new seeds")


main()
