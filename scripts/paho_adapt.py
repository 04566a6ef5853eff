#!/usr/bin/env python3
"""Runs one Eclipse Paho interoperability suite against a broker, adapted to iothub's rules.

The suites (eclipse/paho.mqtt.testing, interoperability/client_test.py for MQTT 3.1.1 and
client_test5.py for MQTT 5) are EPL/EDL licensed and are not part of this repository: this
wrapper imports them from a checkout given on the command line and changes only what the hub
requires, in one place:

1. Credentials on every CONNECT: the suites connect anonymously; the hub refuses anonymous
   clients (S-1.2, S-1.5). Every Client.connect gets --username/--password (a service user).
2. Topics under the service user's namespace: the suites' topics ("TopicA", "TopicA/+", "#", ...)
   get --prefix in front ("$iothub/user/things/paho-interop/TopicA", ...), since a service user
   may use only `$iothub/...` topics (S-1.5). The suites' "no subscribe" filter
   ("test/nosubscribe") is kept as it is: the hub refuses it, which is what the test wants.
3. The clean-up that subscribes to "#" to find and delete retained messages subscribes to
   prefix + "#" instead (the same messages: every topic the suites use is under the prefix).

Nothing else changes: the tests, their assertions and their timing are the suites' own (each
test gets a 120 s deadline, so a test that waits forever counts as failed instead of hanging).

Output: unittest's report on stderr, then one line per test on stdout,
`RESULT <suite> <test> pass|fail`, which scripts/paho-interop compares with
conformance/paho-expected.txt.
"""

import argparse
import functools
import importlib
import os
import signal
import sys
import unittest

TOPICS = ("TopicA", "TopicA/B", "Topic/C", "TopicA/C", "/TopicA")
WILDTOPICS = ("TopicA/+", "+/C", "#", "/#", "/+", "+/+", "TopicA/#")
NOSUBSCRIBE = ("test/nosubscribe",)
# Some tests wait in a loop for a DISCONNECT that a broker may never send (client_test5's
# test_flow_control2 against a broker that ignores Receive Maximum): each test gets this long.
TEST_TIMEOUT_S = 120


class TestTimeout(Exception):
    pass


def with_timeout(method):
    """Runs a test method with a SIGALRM deadline (the suites run in the main thread)."""

    @functools.wraps(method)
    def run(self, *args, **kwargs):
        def expire(signum, frame):
            raise TestTimeout(f"no result within {TEST_TIMEOUT_S} s")

        previous = signal.signal(signal.SIGALRM, expire)
        signal.alarm(TEST_TIMEOUT_S)
        try:
            return method(self, *args, **kwargs)
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, previous)

    return run


def adapt(suite, username, password, prefix, host, port):
    """Applies the three adaptations above to an imported suite module."""
    client_cls = suite.mqtt_client.Client

    original_connect = client_cls.connect

    def connect(self, *args, **kwargs):
        kwargs.setdefault("username", username)
        # The suites' packers write the password as binary data.
        kwargs.setdefault("password", password.encode("utf-8"))
        return original_connect(self, *args, **kwargs)

    client_cls.connect = connect

    original_subscribe = client_cls.subscribe

    def subscribe(self, topics, *args, **kwargs):
        topics = [prefix + "#" if t == "#" else t for t in topics]
        return original_subscribe(self, topics, *args, **kwargs)

    client_cls.subscribe = subscribe

    def set_data():
        suite.topics = tuple(prefix + t for t in TOPICS)
        suite.wildtopics = tuple(prefix + t for t in WILDTOPICS)
        suite.nosubscribe_topics = NOSUBSCRIBE
        # client_test5's shared subscription test builds its topics from this one.
        suite.topic_prefix = prefix
        suite.host = host
        suite.port = port

    # client_test5 calls setData() from setUpClass; client_test reads the module globals.
    suite.setData = set_data
    set_data()

    for name in dir(suite.Test):
        if name.startswith("test"):
            setattr(suite.Test, name, with_timeout(getattr(suite.Test, name)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkout", required=True, help="a clone of eclipse/paho.mqtt.testing")
    ap.add_argument("--suite", required=True, choices=["client_test", "client_test5"])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--username", required=True)
    ap.add_argument("--password", required=True)
    ap.add_argument("--prefix", default="$iothub/user/things/paho-interop/")
    ap.add_argument("--only", help="run just this test (for debugging)")
    args = ap.parse_args()

    sys.path.insert(0, os.path.join(args.checkout, "interoperability"))
    suite = importlib.import_module(args.suite)
    adapt(suite, args.username, args.password, args.prefix, args.host, args.port)

    tests = unittest.TestLoader().loadTestsFromTestCase(suite.Test)
    if args.only:
        tests = unittest.TestSuite(t for t in tests if t.id().endswith("." + args.only))
    names = sorted(t.id().rsplit(".", 1)[-1] for t in tests)
    result = unittest.TextTestRunner(stream=sys.stderr, verbosity=2).run(tests)
    failed = {t.id().rsplit(".", 1)[-1] for t, _ in result.failures + result.errors}
    if not failed <= set(names):
        # setUpClass failed (reported under its own name): no test ran.
        failed = set(names)
    for name in names:
        print(f"RESULT {args.suite} {name} {'fail' if name in failed else 'pass'}", flush=True)


if __name__ == "__main__":
    main()
