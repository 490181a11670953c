#!/usr/bin/env python3
"""Hostile realm exports made through the REAL Parsec server (parsec-cloud 3.9.3).

The server stores whatever blob a member's device uploads: this driver acts as such devices,
signs and encrypts crafted msgpack with the `parsec._parsec` bindings (and the hand-written
helpers of ../shared/interop/oracle_lib.py), uploads it (one realm per attack), then exports every
realm with the real `parsec export_realm` CLI. Raw SQLite damage is applied afterwards to copies of
the clean export. Run with the interop venv's python:

    $PY make_adversarial.py --interop ../shared/interop --fixtures ../shared/fixtures/parsec --out DIR

Writes DIR/<case>.sqlite and DIR/cases.json (one row per case: export path, root verify key,
legitimate files with their SHA-256, hostile entries). Everything here is ours; nothing is copied
from Parsec's source.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import math
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import unicodedata
from pathlib import Path

ap = argparse.ArgumentParser()
ap.add_argument("--interop", required=True, help="../shared/interop (oracle_lib.py)")
ap.add_argument("--fixtures", required=True, help="../shared/fixtures/parsec (authority/service keys)")
ap.add_argument("--out", required=True, help="output directory (created)")
ap.add_argument("--only", action="append", default=[], help="build only these cases (debugging)")
ap.add_argument("--jobs", type=int, default=3, help="parallel export_realm runs")
args = ap.parse_args()
sys.path.insert(0, str(Path(args.interop).resolve()))

import msgpack  # noqa: E402
import zstandard  # noqa: E402

from oracle_lib import (  # noqa: E402
    CANARY_UUID,
    REALM_RENAME_UUID,
    Device,
    ParsecServer,
    PostgresCluster,
    Rpc,
    derive_key,
    dump_v0,
    expect_ok,
    ext_dt,
    ext_id,
    faketime_prefix,
    log,
    now_us,
    parsec_python,
    realm_keys_bundle_access_dump,
    realm_keys_bundle_dump_sign,
    us_to_dt,
    NEUTRAL_CWD,
)
from parsec._parsec import (  # noqa: E402
    BlockID,
    DeviceCertificate,
    DeviceID,
    DeviceLabel,
    DevicePurpose,
    EmailAddress,
    HashAlgorithm,
    HumanHandle,
    ParsecOrganizationBootstrapAddr,
    PrivateKey,
    PrivateKeyAlgorithm,
    RealmKeyRotationCertificate,
    RealmNameCertificate,
    RealmRole,
    RealmRoleCertificate,
    RevokedUserCertificate,
    SecretKey,
    SecretKeyAlgorithm,
    SequesterAuthorityCertificate,
    SequesterPublicKeyDer,
    SequesterServiceCertificate,
    SequesterServiceID,
    SequesterSigningKeyDer,
    SequesterVerifyKeyDer,
    SigningKey,
    SigningKeyAlgorithm,
    UserCertificate,
    UserID,
    UserProfile,
    VlobID,
    anonymous_cmds,
    authenticated_cmds,
)

A = authenticated_cmds.latest
BLOCKSIZE = 512 * 1024
SERVICE_ID_HEX = "00000000000000000000000000000001"
EXPORT_LATE_OFFSET_S = 320


class Clock:
    """Strictly increasing client timestamps (µs), never behind real time."""

    def __init__(self) -> None:
        self.last = 0

    def tick(self) -> int:
        self.last = max(self.last + 1, now_us())
        return self.last


class Org:
    """A sequestered organisation with alice (admin), bob, carol and dave (standard)."""

    def __init__(self, server: ParsecServer, fixtures: Path):
        self.server = server
        self.clock = Clock()
        self.org_id = f"Adversarial{os.urandom(3).hex()}"
        self.rpc = Rpc(server.base_url, self.org_id)
        self.users: dict[str, tuple[UserID, PrivateKey, Device]] = {}
        auth_pub = (fixtures / "sequester_authority.public.pem").read_text()
        self.authority_verify = SequesterVerifyKeyDer.load_pem(auth_pub)
        self.authority_sign = SequesterSigningKeyDer.load_pem(
            (fixtures / "sequester_authority.private.pem").read_text())
        self.service_pub = SequesterPublicKeyDer.load_pem(
            (fixtures / f"sequester_service_1.{SERVICE_ID_HEX}.public.pem").read_text())

    def bootstrap(self) -> None:
        rep = self.rpc.admin("POST", "/organizations", self.server.admin_token, {"organization_id": self.org_id})
        token = ParsecOrganizationBootstrapAddr.from_url(rep["bootstrap_url"]).token
        ts = self.clock.tick()
        root = SigningKey.generate()
        self.root_verify_key = root.verify_key
        uid, priv, dev = self._new_user("alice")
        common = dict(author=None, timestamp=us_to_dt(ts), user_id=uid, public_key=priv.public_key,
                      algorithm=PrivateKeyAlgorithm.X25519_XSALSA20_POLY1305, profile=UserProfile.ADMIN)
        uc = UserCertificate(human_handle=HumanHandle(EmailAddress("alice@adversarial.example"), "Alice"), **common)
        ruc = UserCertificate(human_handle=None, **common)
        dc, rdc = self._device_certs(None, ts, uid, dev)
        acert = SequesterAuthorityCertificate(timestamp=us_to_dt(ts), verify_key_der=self.authority_verify)
        req = anonymous_cmds.latest.organization_bootstrap.Req(
            bootstrap_token=token, root_verify_key=root.verify_key,
            user_certificate=uc.dump_and_sign(root), device_certificate=dc.dump_and_sign(root),
            redacted_user_certificate=ruc.dump_and_sign(root), redacted_device_certificate=rdc.dump_and_sign(root),
            sequester_authority_certificate=acert.dump_and_sign(root),
        )
        expect_ok(self.rpc.anonymous(req, anonymous_cmds.latest.organization_bootstrap.Rep), "bootstrap")

    def _new_user(self, name: str):
        uid, priv = UserID.new(), PrivateKey.generate()
        dev = Device(user_id=uid, device_id=DeviceID.new(), signing_key=SigningKey.generate(), label=f"{name}@dev1")
        self.users[name] = (uid, priv, dev)
        return uid, priv, dev

    def _device_certs(self, author: Device | None, ts: int, uid: UserID, dev: Device):
        kw = dict(author=author.device_id if author else None, timestamp=us_to_dt(ts), purpose=DevicePurpose.STANDARD,
                  user_id=uid, device_id=dev.device_id, verify_key=dev.signing_key.verify_key,
                  algorithm=SigningKeyAlgorithm.ED25519)
        return DeviceCertificate(device_label=DeviceLabel(dev.label), **kw), DeviceCertificate(device_label=None, **kw)

    def dev(self, name: str) -> Device:
        return self.users[name][2]

    def create_user(self, name: str) -> None:
        alice = self.dev("alice")
        uid, priv, dev = self._new_user(name)
        ts = self.clock.tick()
        kw = dict(author=alice.device_id, timestamp=us_to_dt(ts), user_id=uid, public_key=priv.public_key,
                  algorithm=PrivateKeyAlgorithm.X25519_XSALSA20_POLY1305, profile=UserProfile.STANDARD)
        uc = UserCertificate(human_handle=HumanHandle(EmailAddress(f"{name}@adversarial.example"), name.title()), **kw)
        ruc = UserCertificate(human_handle=None, **kw)
        dc, rdc = self._device_certs(alice, ts, uid, dev)
        s = alice.signing_key
        req = A.user_create.Req(uc.dump_and_sign(s), dc.dump_and_sign(s), ruc.dump_and_sign(s), rdc.dump_and_sign(s))
        expect_ok(self.rpc.authenticated(alice, req, A.user_create.Rep), f"user_create {name}")

    def revoke_user(self, name: str, ts: int) -> None:
        alice = self.dev("alice")
        cert = RevokedUserCertificate(author=alice.device_id, timestamp=us_to_dt(ts), user_id=self.users[name][0])
        req = A.user_revoke.Req(revoked_user_certificate=cert.dump_and_sign(alice.signing_key))
        expect_ok(self.rpc.authenticated(alice, req, A.user_revoke.Rep), f"user_revoke {name}")

    def register_service(self, db_url: str, workdir: Path) -> None:
        ts = self.clock.tick()
        cert = SequesterServiceCertificate(timestamp=us_to_dt(ts), service_id=SequesterServiceID.from_hex(SERVICE_ID_HEX),
                                           service_label="Adversarial service", encryption_key_der=self.service_pub)
        signed = self.authority_sign.sign(cert.dump())
        b64 = base64.b64encode(signed).decode()
        pem = ("-----BEGIN PARSEC SEQUESTER SERVICE CERTIFICATE-----\n"
               + "\n".join(b64[i:i + 64] for i in range(0, len(b64), 64))
               + "\n-----END PARSEC SEQUESTER SERVICE CERTIFICATE-----\n")
        path = workdir / "service.pem"
        path.write_text(pem)
        cp = subprocess.run([*faketime_prefix(), parsec_python(), "-m", "parsec", "sequester", "create_service",
                             "--service-certificate", str(path), "--organization", self.org_id, "--db", db_url],
                            cwd=NEUTRAL_CWD, capture_output=True, text=True)
        if cp.returncode != 0:
            raise RuntimeError(f"create_service refused:\n{cp.stdout}\n{cp.stderr}")


class Realm:
    """One workspace: its keys, an upload helper for crafted manifests and blocks."""

    def __init__(self, org: Org, case: str):
        self.org = org
        self.case = case
        self.rpc = org.rpc
        self.clock = org.clock
        self.realm_id = VlobID.new()
        self.versions: dict[str, int] = {}
        alice = org.dev("alice")
        ts = self.clock.tick()
        cert = RealmRoleCertificate(author=alice.device_id, timestamp=us_to_dt(ts), realm_id=self.realm_id,
                                    user_id=alice.user_id, role=RealmRole.OWNER)
        expect_ok(self.rpc.authenticated(alice, A.realm_create.Req(cert.dump_and_sign(alice.signing_key)),
                                         A.realm_create.Rep), "realm_create")
        self.participants = {"alice": RealmRole.OWNER}
        self.key = os.urandom(32)
        ts = self.clock.tick()
        self.kb_key = SecretKey.generate()
        keys_bundle = self.kb_key.encrypt(realm_keys_bundle_dump_sign(alice.device_id, ts, self.realm_id, [self.key],
                                                                      alice.signing_key))
        access = realm_keys_bundle_access_dump(self.kb_key)
        rot = RealmKeyRotationCertificate(
            author=alice.device_id, timestamp=us_to_dt(ts), realm_id=self.realm_id, key_index=1,
            encryption_algorithm=SecretKeyAlgorithm.BLAKE2B_XSALSA20_POLY1305, hash_algorithm=HashAlgorithm.SHA256,
            key_canary=derive_key(self.key, CANARY_UUID).encrypt(b""))
        req = A.realm_rotate_key.Req(
            realm_key_rotation_certificate=rot.dump_and_sign(alice.signing_key),
            per_participant_keys_bundle_access={alice.user_id: org.users["alice"][1].public_key.encrypt_for_self(access)},
            per_sequester_service_keys_bundle_access={SequesterServiceID.from_hex(SERVICE_ID_HEX):
                                                      org.service_pub.encrypt(access)},
            keys_bundle=keys_bundle)
        expect_ok(self.rpc.authenticated(alice, req, A.realm_rotate_key.Rep), "realm_rotate_key")
        ts = self.clock.tick()
        enc = derive_key(self.key, REALM_RENAME_UUID).encrypt(f"adversarial {case}".encode())
        name_cert = RealmNameCertificate(author=alice.device_id, timestamp=us_to_dt(ts), realm_id=self.realm_id,
                                         key_index=1, encrypted_name=enc)
        expect_ok(self.rpc.authenticated(alice, A.realm_rename.Req(realm_name_certificate=name_cert.dump_and_sign(
            alice.signing_key), initial_name_or_fail=True), A.realm_rename.Rep), "realm_rename")
        self.legit: dict[str, str] = {}  # path -> sha256
        self.hostile: list[dict] = []
        # (vlob id, device id): `vlob_atom.author` rewritten in the export afterwards
        self.author_patches: list[tuple[bytes, bytes]] = []
        # raw signed certificates appended to `common_certificate` in the export afterwards
        self.extra_common_certificates: list[bytes] = []

    def share(self, name: str, role: RealmRole | None, ts: int | None = None) -> None:
        alice = self.org.dev("alice")
        uid = self.org.users[name][0]
        ts = ts or self.clock.tick()
        cert = RealmRoleCertificate(author=alice.device_id, timestamp=us_to_dt(ts), realm_id=self.realm_id,
                                    user_id=uid, role=role)
        req = A.realm_share.Req(realm_role_certificate=cert.dump_and_sign(alice.signing_key),
                                    recipient_keys_bundle_access=self.org.users[name][1].public_key.encrypt_for_self(
                                        realm_keys_bundle_access_dump(self.kb_key)), key_index=1)
        expect_ok(self.rpc.authenticated(alice, req, A.realm_share.Rep), f"realm_share {name} {role}")
        self.participants[name] = role

    # ------------------------------------------------------------ uploads

    def block(self, data: bytes, offset: int, author: str = "alice", upload: bool = True) -> dict:
        bid = BlockID.new()
        if upload:
            enc = derive_key(self.key, bid.bytes).encrypt(data)
            req = A.block_create.Req(block_id=bid, realm_id=self.realm_id, key_index=1, block=enc)
            expect_ok(self.rpc.authenticated(self.org.dev(author), req, A.block_create.Rep), "block_create")
        return {"id": ext_id(bid.bytes), "offset": offset, "size": len(data), "digest": hashlib.sha256(data).digest()}

    def blocks_for(self, content: bytes, author: str = "alice") -> list[dict]:
        return [self.block(content[o:o + BLOCKSIZE], o, author) for o in range(0, len(content), BLOCKSIZE)]

    def header(self, kind: str, vid: bytes, parent: bytes, author: Device | DeviceID, ts: int) -> dict:
        dev_id = author.device_id if isinstance(author, Device) else author
        version = self.versions.get(vid.hex(), 0) + 1
        return {"type": kind, "author": ext_id(dev_id.bytes), "timestamp": ext_dt(ts), "id": ext_id(vid),
                "parent": ext_id(parent), "version": version, "created": ext_dt(ts), "updated": ext_dt(ts)}

    def upload(self, vid: bytes, serialized: bytes, uploader: str = "alice", signer: SigningKey | None = None,
               ts: int | None = None) -> None:
        """Signs (by default with the uploader's device key), encrypts, vlob_create/vlob_update."""
        dev = self.org.dev(uploader)
        signed = (signer or dev.signing_key).sign(serialized)
        blob = derive_key(self.key, vid).encrypt(signed)
        ts = ts if ts is not None else self.clock.last
        version = self.versions.get(vid.hex(), 0) + 1
        v = VlobID.from_hex(vid.hex())
        if version == 1:
            req = A.vlob_create.Req(realm_id=self.realm_id, vlob_id=v, key_index=1, timestamp=us_to_dt(ts), blob=blob)
            expect_ok(self.rpc.authenticated(dev, req, A.vlob_create.Rep), f"{self.case}: vlob_create")
        else:
            req = A.vlob_update.Req(realm_id=self.realm_id, vlob_id=v, key_index=1, timestamp=us_to_dt(ts),
                                    version=version, blob=blob)
            expect_ok(self.rpc.authenticated(dev, req, A.vlob_update.Rep), f"{self.case}: vlob_update")
        self.versions[vid.hex()] = version

    def folder(self, vid: bytes, parent: bytes, children: dict, author: str = "alice", extra: dict | None = None,
               ts: int | None = None) -> bytes:
        ts = ts or self.clock.tick()
        m = self.header("folder_manifest", vid, parent, self.org.dev(author), ts)
        m["children"] = {n: ext_id(c) for n, c in children.items()}
        if extra:
            m.update(extra)
        self.upload(vid, dump_v0(m), author, ts=ts)
        return vid

    def file(self, vid: bytes, parent: bytes, content: bytes, author: str = "alice", ts: int | None = None) -> bytes:
        blocks = self.blocks_for(content, author)
        ts = ts or self.clock.tick()
        m = self.header("file_manifest", vid, parent, self.org.dev(author), ts)
        m.update(size=len(content), blocksize=BLOCKSIZE, blocks=blocks)
        self.upload(vid, dump_v0(m), author, ts=ts)
        return vid

    def raw_file(self, vid: bytes, parent: bytes, size: int, blocks: list[dict], blocksize: int = BLOCKSIZE,
                 author: str = "alice") -> bytes:
        ts = self.clock.tick()
        m = self.header("file_manifest", vid, parent, self.org.dev(author), ts)
        m.update(size=size, blocksize=blocksize, blocks=blocks)
        self.upload(vid, dump_v0(m), author, ts=ts)
        return vid

    def legit_tree(self) -> dict[str, bytes]:
        """Legitimate files that must still be extracted next to every attack: root children."""
        seed = hashlib.sha256(self.case.encode()).digest()
        small = b"legitimate file of case " + self.case.encode() + b"\n"
        big = b"".join(hashlib.sha256(seed + i.to_bytes(4, "big")).digest() for i in range(20000))  # 640000 B, 2 blocks
        root = self.realm_id.bytes
        dir_id = os.urandom(16)
        a = self.file(os.urandom(16), root, small)
        b = self.file(os.urandom(16), dir_id, big, author="bob" if "bob" in self.participants else "alice")
        self.folder(dir_id, root, {"legit-b.bin": b})
        self.legit["/legit-a.txt"] = hashlib.sha256(small).hexdigest()
        self.legit["/legit-dir/legit-b.bin"] = hashlib.sha256(big).hexdigest()
        return {"legit-a.txt": a, "legit-dir": dir_id}

    def root(self, children: dict, extra: dict | None = None) -> None:
        r = self.realm_id.bytes
        self.folder(r, r, children, extra=extra)
        self.root_children = children

    def hostile_rows(self) -> list[dict]:
        """Hostile entries with the vlob ID of those listed in the root (what `verify` reports)."""
        kids = getattr(self, "root_children", {})
        out = []
        for h in self.hostile:
            name = h["path"][1:]
            vid = kids.get(name) if "/" not in name else None
            out.append({**h, "id": vid.hex() if vid else None})
        return out

    def hostile_entry(self, path: str, what: str) -> None:
        self.hostile.append({"path": path, "what": what})


# ---------------------------------------------------------------- cases


def new_id() -> bytes:
    return os.urandom(16)


def case_baseline(r: Realm) -> None:
    r.root(r.legit_tree())


def case_root_self_child(r: Realm) -> None:
    kids = r.legit_tree()
    kids["myself"] = r.realm_id.bytes
    r.root(kids)
    r.hostile_entry("/myself", "the root listed as its own child")


def case_ancestor_cycle(r: Realm) -> None:
    root = r.realm_id.bytes
    kids = r.legit_tree()
    a, b = new_id(), new_id()
    # /a/b lists its grandparent /a and the root again (whose `parent` fields are not /a/b)
    r.folder(b, a, {"back-to-a": a, "back-to-root": root})
    r.folder(a, root, {"b": b})
    # two folders each claiming the other as parent, one listed in the root
    c, d = new_id(), new_id()
    r.folder(c, d, {"d": d})
    r.folder(d, c, {"c": c})
    # a child whose `parent` names another folder
    stray = r.file(new_id(), a, b"stray\n")
    kids.update({"a": a, "c": c, "wrong-parent.txt": stray})
    r.root(kids)
    r.hostile_entry("/a/b/back-to-a", "an ancestor listed as a child")
    r.hostile_entry("/a/b/back-to-root", "the root listed as a grandchild")
    r.hostile_entry("/c", "mutual parents (c.parent = d, d.parent = c)")
    r.hostile_entry("/wrong-parent.txt", "file whose parent field names /a")


def case_fanout(r: Realm) -> None:
    root = r.realm_id.bytes
    kids = r.legit_tree()
    levels = [new_id() for _ in range(9)]
    leaf = r.file(new_id(), levels[-1], b"leaf\n")
    for depth in reversed(range(9)):
        parent = levels[depth - 1] if depth else root
        below = {f"n{i}": (levels[depth + 1] if depth + 1 < 9 else leaf) for i in range(8)}
        if depth + 1 == 9:
            below = {f"leaf{i}": leaf for i in range(8)}
        r.folder(levels[depth], parent, below)
    kids["fan"] = levels[0]
    r.root(kids)
    r.hostile_entry("/fan", "nine levels, each listing the next under eight names (8^9 paths)")


def nested_arrays(n: int) -> bytes:
    return b"\x91" * n + b"\xc0"


def case_nested_arrays(r: Realm) -> None:
    root = r.realm_id.bytes
    kids = r.legit_tree()
    deep = nested_arrays(1_000_000)
    # a folder manifest whose map holds an extra key with a million nested arrays
    vid = new_id()
    ts = r.clock.tick()
    m = r.header("folder_manifest", vid, root, r.org.dev("alice"), ts)
    m["children"] = {}
    body = msgpack.packb(m, use_bin_type=True)
    body = bytes([body[0] + 1]) + body[1:] + msgpack.packb("deep") + deep  # fixmap count + 1
    r.upload(vid, b"\x00" + zstandard.ZstdCompressor().compress(body), ts=ts)
    # a file manifest whose `blocks` is a million nested arrays
    fid = new_id()
    ts = r.clock.tick()
    m = r.header("file_manifest", fid, root, r.org.dev("alice"), ts)
    m.update(size=10, blocksize=BLOCKSIZE)
    body = msgpack.packb(m, use_bin_type=True)
    body = bytes([body[0] + 1]) + body[1:] + msgpack.packb("blocks") + deep
    r.upload(fid, b"\x00" + zstandard.ZstdCompressor().compress(body), ts=ts)
    kids.update({"deep-folder": vid, "deep-file": fid})
    r.root(kids)
    r.hostile_entry("/deep-folder", "folder manifest with 1e6 nested msgpack arrays")
    r.hostile_entry("/deep-file", "file manifest whose blocks are 1e6 nested arrays")


def case_huge_sizes(r: Realm) -> None:
    root = r.realm_id.bytes
    kids = r.legit_tree()
    kids["terabyte.bin"] = r.raw_file(new_id(), root, 1 << 40, [])
    kids["two-pow-50.bin"] = r.raw_file(new_id(), root, 1 << 50, [])
    kids["u64-max.bin"] = r.raw_file(new_id(), root, (1 << 64) - 1, [])
    r.root(kids)
    for n in ("terabyte.bin", "two-pow-50.bin", "u64-max.bin"):
        r.hostile_entry("/" + n, "absurd declared size with no blocks")


def zstd_bomb(header: dict, entries: int) -> bytes:
    """v0 data whose msgpack, once decompressed, is `header` plus an extra key holding an array of
    `entries` nils: a few KiB compressed, `entries` bytes (and as many msgpack values) inflated."""
    head = msgpack.packb(header, use_bin_type=True)
    head = bytes([head[0] + 1]) + head[1:] + msgpack.packb("bomb") + b"\xdd" + entries.to_bytes(4, "big")
    cobj = zstandard.ZstdCompressor(level=1).compressobj()
    out = [cobj.compress(head)]
    chunk = b"\xc0" * (16 << 20)
    left = entries
    while left:
        n = min(left, len(chunk))
        out.append(cobj.compress(chunk[:n]))
        left -= n
    out.append(cobj.flush())
    return b"\x00" + b"".join(out)


BOMB_ENTRIES = 400_000_000


def case_zstd_bomb(r: Realm) -> None:
    root = r.realm_id.bytes
    kids = r.legit_tree()
    vid = new_id()
    ts = r.clock.tick()
    m = r.header("folder_manifest", vid, root, r.org.dev("alice"), ts)
    m["children"] = {}
    data = zstd_bomb(m, BOMB_ENTRIES)
    log(f"zstd bomb manifest: {len(data)} bytes -> {BOMB_ENTRIES} msgpack nils")
    r.upload(vid, data, ts=ts)
    kids["bomb"] = vid
    r.root(kids)
    r.hostile_entry("/bomb", f"manifest inflating to {BOMB_ENTRIES} msgpack entries ({len(data)} bytes stored)")


def case_revoked_author(r: Realm) -> None:
    """dave (CONTRIBUTOR) is revoked, then a manifest signed by dave's device and timestamped after
    the revocation is stored. The server refuses dave's own upload after revocation (and refuses
    a revocation dated before dave's last upload), so alice's device uploads it and the export's
    `vlob_atom.author` is set to dave's device afterwards: what a hostile server admin can hand over."""
    root = r.realm_id.bytes
    r.share("dave", RealmRole.CONTRIBUTOR)
    kids = r.legit_tree()
    content = b"written by a revoked device\n"
    blocks = r.blocks_for(content, "dave")
    r.org.revoke_user("dave", r.clock.tick())
    fid = new_id()
    ts = r.clock.tick()
    dave = r.org.dev("dave")
    m = r.header("file_manifest", fid, root, dave, ts)
    m.update(size=len(content), blocksize=BLOCKSIZE, blocks=blocks)
    r.upload(fid, dump_v0(m), "alice", signer=dave.signing_key, ts=ts)
    r.author_patches.append((fid, dave.device_id.bytes))
    kids["by-revoked.txt"] = fid
    r.root(kids)
    r.hostile_entry("/by-revoked.txt", "written by dave's device after dave was revoked")


def case_reader_author(r: Realm) -> None:
    """carol writes as CONTRIBUTOR, is made READER, then a manifest signed by carol's device and
    timestamped after that is stored (uploaded by alice's device, `vlob_atom.author` set to carol's
    device afterwards: the server itself refuses both orders)."""
    root = r.realm_id.bytes
    r.share("carol", RealmRole.CONTRIBUTOR)
    kids = r.legit_tree()
    before = b"written by carol while CONTRIBUTOR\n"
    kids["by-carol-contributor.txt"] = r.file(new_id(), root, before, author="carol")
    r.legit["/by-carol-contributor.txt"] = hashlib.sha256(before).hexdigest()
    content = b"written by a reader\n"
    blocks = r.blocks_for(content, "carol")
    r.share("carol", RealmRole.READER)
    carol = r.org.dev("carol")
    fid = new_id()
    ts = r.clock.tick()
    m = r.header("file_manifest", fid, root, carol, ts)
    m.update(size=len(content), blocksize=BLOCKSIZE, blocks=blocks)
    r.upload(fid, dump_v0(m), "alice", signer=carol.signing_key, ts=ts)
    r.author_patches.append((fid, carol.device_id.bytes))
    kids["by-reader.txt"] = fid
    r.root(kids)
    r.hostile_entry("/by-reader.txt", "written by carol while her realm role was READER")


def case_duplicate_ids(r: Realm) -> None:
    root = r.realm_id.bytes
    kids = r.legit_tree()
    f = r.file(new_id(), root, b"listed three times\n")
    sub = r.folder(new_id(), root, {"dup-3": f})
    kids.update({"dup-1": f, "dup-2": f, "dup-dir": sub})
    r.root(kids)
    r.hostile_entry("/dup-2", "same entry ID listed under two names")
    r.hostile_entry("/dup-dir/dup-3", "same entry ID listed in two folders")


def invalid_names() -> dict[str, str]:
    """Names no Parsec entry may have (and path escapes)."""
    tag = os.urandom(6).hex()  # per run: a stale file from an earlier run cannot fail this one
    return {
        "..": "dot-dot",
        ".": "dot",
        "": "empty",
        "a/b": "slash",
        f"../escaped-{tag}": "relative escape",
        f"../../../../../../../../../../../../tmp/adv-escape-{tag}": "absolute escape",
        "nul\x00byte": "NUL",
        "x" * 300: "300 bytes",
    }


def odd_names() -> dict[str, str]:
    """Valid names that are dangerous on a terminal or ambiguous once normalised."""
    nfc = unicodedata.normalize("NFC", "café-twin")
    nfd = unicodedata.normalize("NFD", "café-twin")
    assert nfc != nfd
    return {
        nfc: "NFC twin",
        nfd: "NFD twin",
        "\x1b[2J\x1b[31mansi-red": "ANSI escape",
        "carriage\rreturn\nnewline": "CR/LF",
        "bell\x07": "BEL",
        "\u202eevil.txt": "bidi override",
    }


def case_bad_names(r: Realm) -> None:
    """Invalid names in /invalid-names (Parsec itself refuses such a folder, so it may be refused
    whole), terminal-hostile and NFC/NFD-twin names in /odd-names; legitimate files in the root."""
    root = r.realm_id.bytes
    kids = r.legit_tree()
    for folder, names in (("invalid-names", invalid_names()), ("odd-names", odd_names())):
        fid = new_id()
        children = {}
        for name, what in names.items():
            children[name] = r.file(new_id(), fid, f"bad name: {what}\n".encode())
            r.hostile_entry(f"/{folder}/{name}", what)
        kids[folder] = r.folder(fid, root, children)
    r.root(kids)


def case_blocks(r: Realm) -> None:
    root = r.realm_id.bytes
    kids = r.legit_tree()
    a = r.block(b"A" * 100, 0)
    b = r.block(b"B" * 100, 50)  # overlaps a
    kids["overlap.bin"] = r.raw_file(new_id(), root, 150, [a, b], blocksize=4096)
    c = r.block(b"C" * 100, 0)
    kids["beyond-size.bin"] = r.raw_file(new_id(), root, 10, [c])  # block ends past the size
    d = r.block(b"D" * 100, 1 << 60)
    kids["far-offset.bin"] = r.raw_file(new_id(), root, 1 << 60, [d])
    e = r.block(b"E" * 100, 0)
    e["size"] = 4000  # declared size is not the block's
    kids["size-lie.bin"] = r.raw_file(new_id(), root, 4000, [e])
    f1 = r.block(b"F" * 100, 100)
    f2 = r.block(b"G" * 100, 0)  # unsorted
    kids["unsorted.bin"] = r.raw_file(new_id(), root, 200, [f1, f2], blocksize=4096)
    g = r.block(b"H" * 100, 4000)  # crosses a span boundary of blocksize 4096
    kids["cross-span.bin"] = r.raw_file(new_id(), root, 4100, [g], blocksize=4096)
    z = r.block(b"Z" * 10, 0)
    kids["blocksize-zero.bin"] = r.raw_file(new_id(), root, 10, [z], blocksize=0)
    r.root(kids)
    for n in ("overlap.bin", "beyond-size.bin", "far-offset.bin", "size-lie.bin", "unsorted.bin",
              "cross-span.bin", "blocksize-zero.bin"):
        r.hostile_entry("/" + n, "bad block accesses")


def case_missing_block(r: Realm) -> None:
    root = r.realm_id.bytes
    kids = r.legit_tree()
    missing = r.block(b"never uploaded" * 10, 0, upload=False)
    kids["missing-block.bin"] = r.raw_file(new_id(), root, 140, [missing])
    r.root(kids)
    r.hostile_entry("/missing-block.bin", "references a block that is not in the export")


def case_id_mismatch(r: Realm) -> None:
    root = r.realm_id.bytes
    kids = r.legit_tree()
    vid, inner = new_id(), new_id()
    ts = r.clock.tick()
    content = b"inner id differs\n"
    blocks = r.blocks_for(content)
    m = r.header("file_manifest", inner, root, r.org.dev("alice"), ts)
    m.update(size=len(content), blocksize=BLOCKSIZE, blocks=blocks)
    r.upload(vid, dump_v0(m), ts=ts)
    # and one claiming the ID of a legitimate file
    vid2 = new_id()
    ts = r.clock.tick()
    m = r.header("file_manifest", kids["legit-a.txt"], root, r.org.dev("alice"), ts)
    m.update(size=len(content), blocksize=BLOCKSIZE, blocks=blocks)
    r.upload(vid2, dump_v0(m), ts=ts)
    kids.update({"wrong-id.txt": vid, "impersonates-legit-a.txt": vid2})
    r.root(kids)
    r.hostile_entry("/wrong-id.txt", "manifest id differs from its vlob id")
    r.hostile_entry("/impersonates-legit-a.txt", "manifest claims the id of /legit-a.txt")


def case_unknown_device(r: Realm) -> None:
    root = r.realm_id.bytes
    kids = r.legit_tree()
    stranger = SigningKey.generate()
    ts = r.clock.tick()
    content = b"signed by a stranger\n"
    blocks = r.blocks_for(content)
    fid = new_id()
    m = r.header("file_manifest", fid, root, DeviceID.new(), ts)
    m.update(size=len(content), blocksize=BLOCKSIZE, blocks=blocks)
    r.upload(fid, dump_v0(m), signer=stranger, ts=ts)
    # and one naming bob's device as author but signed by a stranger key
    fid2 = new_id()
    ts = r.clock.tick()
    m = r.header("file_manifest", fid2, root, r.org.dev("bob"), ts)
    m.update(size=len(content), blocksize=BLOCKSIZE, blocks=blocks)
    r.upload(fid2, dump_v0(m), signer=stranger, ts=ts)
    kids.update({"unknown-signer.txt": fid, "forged-bob.txt": fid2})
    r.root(kids)
    r.hostile_entry("/unknown-signer.txt", "signed by a device the organisation does not know")
    r.hostile_entry("/forged-bob.txt", "claims bob's device, signed by another key")


def case_duplicate_certificate(r: Realm) -> None:
    """A second device certificate for bob's device ID, with another verify key, signed by alice's
    (admin) device: the server refuses it, so it is appended to the export's `common_certificate`
    afterwards. A manifest signed with that other key claims bob's device. Bob's genuine files
    (`/legit-dir/legit-b.bin`) must still verify against his first certificate."""
    root = r.realm_id.bytes
    kids = r.legit_tree()
    alice, bob = r.org.dev("alice"), r.org.dev("bob")
    impostor = SigningKey.generate()
    ts = r.clock.tick()
    cert = DeviceCertificate(author=alice.device_id, timestamp=us_to_dt(ts), purpose=DevicePurpose.STANDARD,
                             user_id=bob.user_id, device_id=bob.device_id, verify_key=impostor.verify_key,
                             algorithm=SigningKeyAlgorithm.ED25519, device_label=DeviceLabel("bob@dev1"))
    r.extra_common_certificates.append(cert.dump_and_sign(alice.signing_key))
    content = b"signed by the second certificate's key\n"
    blocks = r.blocks_for(content)
    fid = new_id()
    ts = r.clock.tick()
    m = r.header("file_manifest", fid, root, bob, ts)
    m.update(size=len(content), blocksize=BLOCKSIZE, blocks=blocks)
    r.upload(fid, dump_v0(m), "alice", signer=impostor, ts=ts)
    r.author_patches.append((fid, bob.device_id.bytes))
    kids["impostor-bob.txt"] = fid
    r.root(kids)
    r.hostile_entry("/impostor-bob.txt", "signed with the key of a second certificate for bob's device ID")


REALM_CASES = {
    "baseline": case_baseline,
    "root_self_child": case_root_self_child,
    "ancestor_cycle": case_ancestor_cycle,
    "fanout_8pow9": case_fanout,
    "nested_arrays": case_nested_arrays,
    "huge_sizes": case_huge_sizes,
    "zstd_bomb": case_zstd_bomb,
    "duplicate_ids": case_duplicate_ids,
    "bad_names": case_bad_names,
    "bad_blocks": case_blocks,
    "missing_block": case_missing_block,
    "id_mismatch": case_id_mismatch,
    "unknown_device": case_unknown_device,
    "duplicate_certificate": case_duplicate_certificate,
    "revoked_author": case_revoked_author,
    "reader_author": case_reader_author,
}

# ---------------------------------------------------------------- SQLite damage

BLOB_COLUMNS = {
    "info": None,
    "common_certificate": "certificate",
    "sequester_certificate": "certificate",
    "realm_certificate": "certificate",
    "realm_keys_bundle": "keys_bundle",
    "realm_keys_bundle_access": "access",
    "realm_sequester_keys_bundle_access": "access",
    "vlob_atom": "blob",
    "block": None,
    "block_data": "data",
}


def damage_cases(base: Path, out: Path, legit: dict, root_key: str) -> list[dict]:
    rows = []

    def row(name: str, what: str, whole: bool) -> dict:
        return {"name": name, "export": str(out / f"{name}.sqlite"), "root_verify_key": root_key,
                "legit": legit, "hostile": [{"path": None, "what": what}], "damage": True,
                "whole_export_damaged": whole}

    # truncations
    data = base.read_bytes()
    for name, size in (("trunc_half", len(data) // 2), ("trunc_header", 60)):
        (out / f"{name}.sqlite").write_bytes(data[:size])
        rows.append(row(name, f"export truncated to {size} of {len(data)} bytes", True))
    # a flipped byte in every table (through SQL, so SQLite itself still opens the file)
    con = sqlite3.connect(base)
    columns = {t: [c[1] for c in con.execute(f"PRAGMA table_info({t})")] for t in BLOB_COLUMNS}
    con.close()
    for table, col in BLOB_COLUMNS.items():
        name = f"flip_{table}"
        dst = out / f"{name}.sqlite"
        shutil.copyfile(base, dst)
        con = sqlite3.connect(dst)
        if col is None:
            # no blob: flip the low bit of every integer column of the first row
            ints = [c for c in columns[table] if c != "_id" and isinstance(
                con.execute(f"SELECT {c} FROM {table} LIMIT 1").fetchone()[0], int)]
            sets = ", ".join(f"{c} = {c} # 1" for c in ints) or None
            blobs = [c for c in columns[table] if isinstance(
                con.execute(f"SELECT {c} FROM {table} LIMIT 1").fetchone()[0], bytes)]
            if blobs:
                c = blobs[0]
                v = bytearray(con.execute(f"SELECT {c} FROM {table} LIMIT 1").fetchone()[0])
                v[len(v) // 2] ^= 0x01
                con.execute(f"UPDATE {table} SET {c} = ? WHERE rowid = (SELECT MIN(rowid) FROM {table})", (bytes(v),))
            elif sets:
                con.execute(f"UPDATE {table} SET {sets} WHERE rowid = (SELECT MIN(rowid) FROM {table})")
        else:
            # the middle byte of every blob in the table (each row damaged)
            for rowid, v in con.execute(f"SELECT rowid, {col} FROM {table}").fetchall():
                v = bytearray(v)
                v[len(v) // 2] ^= 0x01
                con.execute(f"UPDATE {table} SET {col} = ? WHERE rowid = ?", (bytes(v), rowid))
        con.commit()
        con.close()
        rows.append(row(name, f"one flipped bit in every {table}.{col or 'first row'}",
                        table in ("info", "common_certificate", "sequester_certificate", "realm_certificate",
                                  "realm_keys_bundle", "realm_sequester_keys_bundle_access")))
    # raw page damage: flip bytes on disk at seeded offsets in every page after the header
    dst = out / "flip_raw_pages.sqlite"
    raw = bytearray(data)
    page = int.from_bytes(raw[16:18], "big") or 65536
    for p in range(1, len(raw) // page):
        raw[p * page + (p * 7919) % page] ^= 0x5A
    dst.write_bytes(bytes(raw))
    rows.append(row("flip_raw_pages", "one byte flipped on disk in every page but the first", True))
    # a zstd bomb in a certificate row (signature check can only fail after decompressing... or before)
    dst = out / "cert_bomb.sqlite"
    shutil.copyfile(base, dst)
    con = sqlite3.connect(dst)
    bomb = SigningKey.generate().sign(zstd_bomb({"type": "device_certificate"}, BOMB_ENTRIES))
    con.execute("UPDATE common_certificate SET certificate = ? WHERE rowid = (SELECT MAX(rowid) FROM "
                "common_certificate)", (bomb,))
    con.commit()
    con.close()
    rows.append(row("cert_bomb", f"last common certificate replaced by a {len(bomb)}-byte zstd bomb", True))
    # schema damage: a view and a trigger added
    dst = out / "schema_extra.sqlite"
    shutil.copyfile(base, dst)
    con = sqlite3.connect(dst)
    con.execute("CREATE VIEW sneaky AS SELECT * FROM vlob_atom")
    con.execute("CREATE TRIGGER sneaky_t AFTER INSERT ON block BEGIN DELETE FROM block; END")
    con.commit()
    con.close()
    rows.append(row("schema_extra", "a view and a trigger added to the schema", True))
    return rows


# ---------------------------------------------------------------- main


def main() -> int:
    t0 = time.monotonic()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="adversarial-"))
    pg = PostgresCluster(workdir / "pg")
    server = None
    try:
        pg.start()
        server = ParsecServer(workdir, pg.url)
        server.migrate()
        server.start()
        org = Org(server, Path(args.fixtures))
        org.bootstrap()
        org.register_service(pg.url, workdir)
        for name in ("bob", "carol", "dave"):
            org.create_user(name)
        log(f"infrastructure ready ({time.monotonic() - t0:.1f}s)")

        realms: dict[str, Realm] = {}
        wanted = args.only or list(REALM_CASES)
        if "baseline" not in wanted:
            wanted = ["baseline", *wanted]
        for case in wanted:
            if case not in REALM_CASES:
                continue
            t = time.monotonic()
            r = Realm(org, case)
            r.share("bob", RealmRole.CONTRIBUTOR)
            REALM_CASES[case](r)
            realms[case] = r
            log(f"case {case}: realm {r.realm_id.hex} ({time.monotonic() - t:.1f}s)")

        # export every realm (export_realm refuses snapshots younger than 320 s: faketime)
        snapshot_us = max(org.clock.last, now_us()) + 1000
        shift = max(0, math.ceil((snapshot_us - now_us()) / 1e6 + EXPORT_LATE_OFFSET_S + 10))
        snapshot = us_to_dt(snapshot_us).to_rfc3339()
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)
        procs = []
        pending = list(realms.items())
        rows = []
        while pending or procs:
            while pending and len(procs) < args.jobs:
                case, r = pending.pop(0)
                dst = out / f"{case}.sqlite"
                if dst.exists():
                    dst.unlink()
                cmd = [*faketime_prefix(shift), parsec_python(), "-m", "parsec", "export_realm", "--organization",
                       org.org_id, "--realm", r.realm_id.hex, "--snapshot-timestamp", snapshot, "--db", pg.url,
                       "--blockstore", "POSTGRESQL", str(dst)]
                procs.append((case, dst, subprocess.Popen(cmd, cwd=NEUTRAL_CWD, env=env, stdout=subprocess.PIPE,
                                                          stderr=subprocess.STDOUT)))
            case, dst, p = procs.pop(0)
            output = p.communicate()[0]
            if p.returncode != 0 or not dst.exists():
                raise RuntimeError(f"export_realm {case} failed:\n{output.decode(errors='replace')}")
            r = realms[case]
            if r.author_patches or r.extra_common_certificates:
                con = sqlite3.connect(dst)
                for vid, dev in r.author_patches:
                    con.execute("UPDATE vlob_atom SET author = ? WHERE vlob_id = ?", (dev, vid))
                for cert in r.extra_common_certificates:
                    con.execute("INSERT INTO common_certificate (certificate) VALUES (?)", (cert,))
                con.commit()
                con.close()
            rows.append({"name": case, "export": str(dst), "root_verify_key": org.root_verify_key.encode().hex(),
                         "realm_id": r.realm_id.hex, "legit": r.legit, "hostile": r.hostile_rows(), "damage": False,
                         "whole_export_damaged": False})
        # forged: the same kind of tree under a fresh root key, with the genuine authority and
        # service; checked against the genuine organisation's root key
        forged_org = Org(server, Path(args.fixtures))
        forged_org.bootstrap()
        forged_org.register_service(pg.url, workdir)
        forged_org.create_user("bob")
        forged = Realm(forged_org, "forged_root")
        forged.share("bob", RealmRole.CONTRIBUTOR)
        case_baseline(forged)
        dst = out / "forged_root.sqlite"
        if dst.exists():
            dst.unlink()
        snapshot_us = max(forged_org.clock.last, now_us()) + 1000
        shift = max(0, math.ceil((snapshot_us - now_us()) / 1e6 + EXPORT_LATE_OFFSET_S + 10))
        cp = subprocess.run([*faketime_prefix(shift), parsec_python(), "-m", "parsec", "export_realm", "--organization",
                             forged_org.org_id, "--realm", forged.realm_id.hex, "--snapshot-timestamp",
                             us_to_dt(snapshot_us).to_rfc3339(), "--db", pg.url, "--blockstore", "POSTGRESQL", str(dst)],
                            cwd=NEUTRAL_CWD, env=env, capture_output=True, text=True)
        if cp.returncode != 0:
            raise RuntimeError(f"export_realm forged_root failed:\n{cp.stdout}\n{cp.stderr}")
        # the forger names the genuine organisation (the server would not create a second one)
        con = sqlite3.connect(dst)
        con.execute("UPDATE info SET organization_id = ?", (org.org_id,))
        con.commit()
        con.close()
        rows.append({"name": "forged_root", "export": str(dst), "root_verify_key": org.root_verify_key.encode().hex(),
                     "export_root_verify_key": forged_org.root_verify_key.encode().hex(),
                     "realm_id": forged.realm_id.hex, "legit": forged.legit,
                     "hostile": [{"path": None, "what": "signed under a fresh root key, not the organisation's"}],
                     "damage": False, "whole_export_damaged": True})
        forged_org.rpc.close()
        base = out / "baseline.sqlite"
        rows += damage_cases(base, out, realms["baseline"].legit, org.root_verify_key.encode().hex())
        for row in rows:
            row["sha256"] = hashlib.sha256(Path(row["export"]).read_bytes()).hexdigest()
        summary = {"organization_id": org.org_id, "root_verify_key": org.root_verify_key.encode().hex(),
                   "service_id": SERVICE_ID_HEX, "snapshot": snapshot, "cases": rows,
                   "seconds": round(time.monotonic() - t0, 1)}
        (out / "cases.json").write_text(json.dumps(summary, indent=1, ensure_ascii=True))
        log(f"{len(rows)} hostile exports in {out} ({time.monotonic() - t0:.1f}s)")
        org.rpc.close()
        return 0
    finally:
        if server is not None:
            server.stop()
        pg.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
