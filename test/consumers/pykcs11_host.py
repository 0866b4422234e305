#!/usr/bin/python3
"""A PyKCS11 host, run once with the vendor's module and once with the front
(test/consumers/run.sh) and its standard output compared: every result the
host sees must be the same with and without libhaext in front.

Usage: pykcs11_host.py --module PATH [--ca PATH] SCENARIO [ARGS]

--ca PATH: load that library (the front itself) with ctypes as well and call
CA_GetCurrentHAState on the first member's slot in a thread for as long as
the scenario runs; its tally goes to standard error ("ca: ..."), not to the
compared output.

Scenarios print one line per step: what was done and the CK_RV name.
Signatures are RSA PKCS#1 v1.5 (deterministic), printed as a hash.
"""
import argparse
import ctypes
import hashlib
import os
import subprocess
import sys
import threading
import time

import PyKCS11
from PyKCS11 import LowLevel

USER_PIN = "1234"
SO_PIN = "12345678"
MESSAGE = b"libhaext front module test message"


def rvname(rv):
    return PyKCS11.CKR.get(rv, "0x%08X" % rv)


class Host:
    def __init__(self, module):
        self.p11 = PyKCS11.PyKCS11Lib()
        self.p11.load(module)  # dlopen, C_GetFunctionList, C_Initialize

    def tokens(self):
        """label -> slot, for initialized tokens."""
        out = {}
        for slot in self.p11.getSlotList(tokenPresent=True):
            try:
                info = self.p11.getTokenInfo(slot)
            except PyKCS11.PyKCS11Error:
                continue
            if info.flags & PyKCS11.CKF_TOKEN_INITIALIZED:
                out[info.label.strip()] = slot
        return out

    def sign_once(self, slot):
        """Opens a session, logs in, signs, closes: (rv name, digest)."""
        try:
            s = self.p11.openSession(slot, PyKCS11.CKF_SERIAL_SESSION)
        except PyKCS11.PyKCS11Error as e:
            return "open:" + rvname(e.value), ""
        try:
            try:
                s.login(USER_PIN)
            except PyKCS11.PyKCS11Error as e:
                if e.value != PyKCS11.CKR_USER_ALREADY_LOGGED_IN:
                    return "login:" + rvname(e.value), ""
            keys = s.findObjects([(PyKCS11.CKA_CLASS, PyKCS11.CKO_PRIVATE_KEY), (PyKCS11.CKA_LABEL, "k")])
            if not keys:
                return "nokey", ""
            sig = bytes(s.sign(keys[0], MESSAGE, PyKCS11.Mechanism(PyKCS11.CKM_SHA256_RSA_PKCS)))
            return "CKR_OK", hashlib.sha256(sig).hexdigest()[:16]
        except PyKCS11.PyKCS11Error as e:
            return "sign:" + rvname(e.value), ""
        finally:
            try:
                s.closeSession()
            except PyKCS11.PyKCS11Error:
                pass

    def reinit(self):
        rv1 = self.p11.lib.C_Finalize()
        rv2 = self.p11.lib.C_Initialize()
        return "C_Finalize %s, C_Initialize %s" % (rvname(rv1), rvname(rv2))


class CAThread(threading.Thread):
    """Calls CA_GetCurrentHAState in a loop, as a monitor in the host does."""

    def __init__(self, path, slot):
        super().__init__(daemon=True)
        self.lib = ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
        self.fn = self.lib.CA_GetCurrentHAState
        self.fn.argtypes = [ctypes.c_ulong, ctypes.c_void_p]
        self.fn.restype = ctypes.c_ulong
        self.slot = slot
        self.stop = threading.Event()
        self.calls = 0
        self.rvs = {}
        self.statuses = {}

    def run(self):
        buf = ctypes.create_string_buffer(528)
        while not self.stop.is_set():
            rv = self.fn(self.slot, buf)
            self.calls += 1
            self.rvs[rv] = self.rvs.get(rv, 0) + 1
            if rv == 0:
                n = int.from_bytes(buf.raw[520:528], "little")
                for i in range(min(n, 32)):
                    st = int.from_bytes(buf.raw[16 + 16 * i:24 + 16 * i], "little")
                    self.statuses[st] = self.statuses.get(st, 0) + 1
            time.sleep(0.002)

    def finish(self):
        self.stop.set()
        self.join(10)
        rvs = ",".join("0x%X:%d" % kv for kv in sorted(self.rvs.items()))
        sts = ",".join("0x%X:%d" % kv for kv in sorted(self.statuses.items()))
        print("ca: calls=%d rv=%s statuses=%s" % (self.calls, rvs, sts), file=sys.stderr, flush=True)


def out(*a):
    print(*a, flush=True)


def scenario_setup(h, args):
    """An RSA key 'k' on every token (run with the vendor's module)."""
    for label, slot in sorted(h.tokens().items()):
        s = h.p11.openSession(slot, PyKCS11.CKF_SERIAL_SESSION | PyKCS11.CKF_RW_SESSION)
        s.login(USER_PIN)
        if not s.findObjects([(PyKCS11.CKA_LABEL, "k")]):
            pub = [(PyKCS11.CKA_TOKEN, True), (PyKCS11.CKA_LABEL, "k"), (PyKCS11.CKA_MODULUS_BITS, 2048),
                   (PyKCS11.CKA_PUBLIC_EXPONENT, (0x01, 0x00, 0x01)), (PyKCS11.CKA_VERIFY, True)]
            prv = [(PyKCS11.CKA_TOKEN, True), (PyKCS11.CKA_LABEL, "k"), (PyKCS11.CKA_SIGN, True),
                   (PyKCS11.CKA_PRIVATE, True), (PyKCS11.CKA_SENSITIVE, True)]
            s.generateKeyPair(pub, prv, PyKCS11.Mechanism(PyKCS11.CKM_RSA_PKCS_KEY_PAIR_GEN))
        s.logout()
        s.closeSession()
        out("setup %s" % label)


def scenario_sign(h, args):
    """Signs in a loop on every member; one line per member."""
    toks = h.tokens()
    for label in sorted(toks):
        seen = {}
        for _ in range(args.loops):
            rv, d = h.sign_once(toks[label])
            seen[(rv, d)] = seen.get((rv, d), 0) + 1
        for (rv, d), n in sorted(seen.items()):
            out("sign %s x%d %s %s" % (label, n, rv, d))


def scenario_so_login(h, args):
    slot = h.tokens()["m00"]
    s = h.p11.openSession(slot, PyKCS11.CKF_SERIAL_SESSION | PyKCS11.CKF_RW_SESSION)
    for step in range(args.loops):
        for who, pin in (("SO", SO_PIN), ("user", USER_PIN)):
            try:
                s.login(pin, PyKCS11.CKU_SO if who == "SO" else PyKCS11.CKU_USER)
                rv = "CKR_OK"
            except PyKCS11.PyKCS11Error as e:
                rv = rvname(e.value)
            out("%d login %s %s" % (step, who, rv))
            try:
                s.logout()
                rv = "CKR_OK"
            except PyKCS11.PyKCS11Error as e:
                rv = rvname(e.value)
            out("%d logout %s" % (step, rv))
    # SO login with a read-only session of the host's own open: refused.
    ro = h.p11.openSession(slot, PyKCS11.CKF_SERIAL_SESSION)
    try:
        s.login(SO_PIN, PyKCS11.CKU_SO)
        out("login SO with a RO session open CKR_OK")
    except PyKCS11.PyKCS11Error as e:
        out("login SO with a RO session open %s" % rvname(e.value))
    ro.closeSession()
    s.closeSession()


def scenario_last_close(h, args):
    slot = h.tokens()["m00"]
    for step in range(args.loops):
        s = h.p11.openSession(slot, PyKCS11.CKF_SERIAL_SESSION)
        try:
            s.login(USER_PIN)
            rv = "CKR_OK"
        except PyKCS11.PyKCS11Error as e:
            rv = rvname(e.value)
        out("%d login after the last close %s" % (step, rv))
        s.closeSession()
    # Two sessions, close one: still logged in.
    a = h.p11.openSession(slot, PyKCS11.CKF_SERIAL_SESSION)
    b = h.p11.openSession(slot, PyKCS11.CKF_SERIAL_SESSION)
    a.login(USER_PIN)
    a.closeSession()
    try:
        b.login(USER_PIN)
        out("login with another session still open CKR_OK")
    except PyKCS11.PyKCS11Error as e:
        out("login with another session still open %s" % rvname(e.value))
    h.p11.closeAllSessions(slot)
    s = h.p11.openSession(slot, PyKCS11.CKF_SERIAL_SESSION)
    try:
        s.login(USER_PIN)
        out("login after C_CloseAllSessions CKR_OK")
    except PyKCS11.PyKCS11Error as e:
        out("login after C_CloseAllSessions %s" % rvname(e.value))
    s.closeSession()


def scenario_reinit(h, args):
    for step in range(args.loops):
        out("%d %s" % (step, h.reinit()))
        toks = h.tokens()
        for label in sorted(toks):
            out("%d sign %s %s %s" % ((step, label) + h.sign_once(toks[label])))


def scenario_reinit_loop(h, args):
    """The host finalizes and initializes its module again and again for
    --seconds; only the verdict is printed (the count of cycles differs
    from run to run)."""
    end = time.time() + args.seconds
    cycles = bad = 0
    while time.time() < end:
        cycles += 1
        bad += h.reinit() != "C_Finalize CKR_OK, C_Initialize CKR_OK"
    out("reinit-loop %s" % ("every cycle CKR_OK" if bad == 0 and cycles > 10 else "%d of %d failed" % (bad, cycles)))


def scenario_fork(h, args):
    toks = h.tokens()
    out("parent sign %s %s" % h.sign_once(toks["m00"]))
    sys.stdout.flush()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        lines = []
        rv = h.p11.lib.C_Initialize()
        lines.append("child C_Initialize %s" % rvname(rv))
        for label in sorted(toks):
            lines.append("child sign %s %s %s" % ((label,) + h.sign_once(toks[label])))
        os.write(w, ("\n".join(lines) + "\n").encode())
        os._exit(0)
    os.close(w)
    data = b""
    while True:
        chunk = os.read(r, 65536)
        if not chunk:
            break
        data += chunk
    _, status = os.waitpid(pid, 0)
    sys.stdout.write(data.decode())
    out("child exit %d" % status)
    out("parent sign again %s %s" % h.sign_once(toks["m00"]))


def lab(args, action, idx):
    subprocess.run(["bash", args.lab_sh, action, "--dir", args.lab_dir, str(idx)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def scenario_killed(h, args):
    """Members killed and restarted on the p11-kit lab, and the host's
    re-initialization that reconnects."""
    toks = h.tokens()

    def round_(tag):
        for label in sorted(toks):
            out("%s sign %s %s %s" % ((tag, label) + h.sign_once(toks[label])))

    round_("healthy")
    lab(args, "kill", 1)  # member 1's p11-kit-remote dies; its server stays up
    time.sleep(0.2)
    round_("killed")
    out("reinit %s" % h.reinit())
    toks = h.tokens()
    round_("after reinit")
    lab(args, "kill-server", 2)  # member 2's server dies too
    time.sleep(0.2)
    round_("server killed")
    out("reinit %s" % h.reinit())
    toks = h.tokens()
    out("tokens after reinit %s" % ",".join(sorted(toks)))
    lab(args, "restart-server", 2)
    time.sleep(0.5)
    out("reinit %s" % h.reinit())
    toks = h.tokens()
    out("tokens after restart %s" % ",".join(sorted(toks)))
    round_("restarted")


SCENARIOS = {
    "setup": scenario_setup,
    "sign": scenario_sign,
    "so-login": scenario_so_login,
    "last-close": scenario_last_close,
    "reinit": scenario_reinit,
    "fork": scenario_fork,
    "killed": scenario_killed,
    "reinit-loop": scenario_reinit_loop,
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--module", required=True)
    ap.add_argument("--ca", help="call CA_GetCurrentHAState from this library meanwhile")
    ap.add_argument("--ca-threads", type=int, default=1, help="how many threads call CA_GetCurrentHAState")
    ap.add_argument("--loops", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--lab-sh", default=os.environ.get("HALAB_LAB_SH", ""))
    ap.add_argument("--lab-dir", default=os.environ.get("HALAB_DIR", ""))
    ap.add_argument("scenario", choices=sorted(SCENARIOS))
    args = ap.parse_args()
    h = Host(args.module)
    cas = []
    if args.ca:
        cas = [CAThread(args.ca, h.tokens()["m00"]) for _ in range(args.ca_threads)]
        for ca in cas:
            ca.start()
        time.sleep(0.05)
    SCENARIOS[args.scenario](h, args)
    for ca in cas:
        ca.finish()
    out("done")


if __name__ == "__main__":
    main()
