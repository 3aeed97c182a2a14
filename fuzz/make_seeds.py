#!/usr/bin/env python3
"""Writes the seed inputs of the fuzz corpora (fuzz/corpus/<target>/seed-*):
the example policy and roster for the parsers, encoded requests for
decode_request, fixed pseudo-random bytes for engine_ops. Run from anywhere;
files the fuzzer added to the corpora are left alone."""

import pathlib
import random

FUZZ = pathlib.Path(__file__).resolve().parent
ROOT = FUZZ.parent
CORPUS = FUZZ / "corpus"


def write(target, name, data):
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / f"seed-{name}").write_bytes(data if isinstance(data, bytes) else data.encode())


# ------------------------------------------------------------- protobuf wire


def varint(n):
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field(number, value):
    """A field: int -> varint, str/bytes -> length-delimited."""
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, int):
        return varint(number << 3) + varint(value)
    if isinstance(value, str):
        value = value.encode()
    return varint(number << 3 | 2) + varint(len(value)) + value


def message(*fields):
    return b"".join(field(n, v) for n, v in fields)


# Enum values of proto/careroute/v1/careroute.proto.
VOICE, CHAT, SMS, EMAIL, PORTAL = 1, 2, 3, 4, 5
ROUTINE, URGENT, EMERGENCY = 1, 2, 3
NOT_ATTEMPTED, VERIFIED, FAILED = 1, 2, 3
AVAILABLE, AWAY = 2, 5


def request(kind, msg, instant=0):
    """decode_request input: selector byte (instant << 4 | kind), then msg."""
    return bytes([instant << 4 | kind]) + msg


def route(**f):
    fields = [(1, f.get("contact_id", "c-1"))]
    if "request_id" in f:
        fields.append((2, f["request_id"]))
    fields.append((3, f.get("channel", VOICE)))
    fields.append((4, f.get("intent", "billing")))
    if "urgency" in f:
        fields.append((5, f["urgency"]))
    fields.append((6, f.get("identity", VERIFIED)))
    if "language" in f:
        fields.append((7, f["language"]))
    if f.get("escalation"):
        fields.append((8, True))
    for s in f.get("signals", []):
        fields.append((9, s))
    for k, v in f.get("attributes", {}).items():
        fields.append((10, message((1, k), (2, v))))
    if "transfer_from" in f:
        q, a = f["transfer_from"]
        fields.append((11, message((1, q), (2, a)) if a else message((1, q))))
    if "preferred" in f:
        fields.append((12, f["preferred"]))
    return message(*fields)


def decode_request_seeds():
    t = "decode_request"
    write(t, "route-billing", request(0, route(request_id="req-1")))
    write(t, "route-chat-es", request(0, route(channel=CHAT, language="es", intent="scheduling")))
    write(t, "route-emergency", request(0, route(intent="clinical", signals=["chest_pain"])))
    write(
        t,
        "route-escalation",
        request(
            0,
            route(
                escalation=True,
                attributes={"coverage": "in_network", "payment_plan": "offered"},
            ),
        ),
    )
    write(
        t,
        "route-transfer",
        request(
            0,
            route(
                intent="complaint",
                transfer_from=("resolutions", "agent-resolutions-1"),
                preferred="agent-resolutions-2",
                urgency=URGENT,
            ),
        ),
    )
    write(t, "route-closed-portal", request(0, route(channel=PORTAL, identity=NOT_ATTEMPTED), instant=1))
    write(t, "route-failed-identity", request(0, route(identity=FAILED, intent="privacy"), instant=2))
    write(
        t,
        "upsert-agent",
        request(
            1,
            message(
                (1, "agent-new-1"),
                (2, "Billing"),
                (3, "sip:1299@pbx.careroute.example"),
                (4, message((1, "billing"), (2, 3))),
                (4, message((1, "scheduling"), (2, 2))),
                (5, "en"),
                (5, "es-MX"),
                (6, message((1, VOICE), (2, 1))),
                (6, message((1, CHAT), (2, 3))),
            ),
        ),
    )
    write(t, "set-state", request(2, message((1, "agent-billing-1"), (2, AWAY))))
    write(t, "confirm", request(3, message((1, "r-0000000000000000"))))
    write(t, "release", request(4, message((1, "r-0000000000000001"), (2, 1))))
    write(t, "complete", request(5, message((1, "agent-billing-1"), (2, "c-active"))))
    write(t, "path", request(6, message((1, "c-live"))))
    write(t, "cancel", request(7, message((1, "c-live"))))
    write(t, "list-queues", request(8, b""))


def parser_seeds():
    policy = (ROOT / "examples/healthcare.toml").read_text()
    write("policy_parse", "healthcare", policy)
    # The live-queueing variant the engine tests use: lines and steps on
    # billing, a short line on scheduling.
    write(
        "policy_parse",
        "waiting",
        policy.replace(
            'transfer_address = "sip:billing@pbx.careroute.example"',
            'transfer_address = "sip:billing@pbx.careroute.example"\nmax_waiting = 20\n'
            'max_wait = "2h"\nsteps = [{ after = "60s", skills = { billing = 1 } }, '
            '{ after = "120s", overflow_to = "frontline" }]',
            1,
        ).replace("max_waiting = 10", "max_waiting = 2", 1),
    )
    write("roster_parse", "demo-roster", (ROOT / "examples/demo-roster.toml").read_text())


def engine_seeds():
    rng = random.Random(20261123)
    for n in (16, 64, 256, 1024, 4096):
        write("engine_ops", f"random-{n}", bytes(rng.randrange(256) for _ in range(n)))


def json_seeds():
    # One selector byte (the route, in path order), then the JSON body.
    bodies = [
        '{"contactId":"c-1","channel":"CHANNEL_VOICE","intent":"billing","urgency":"URGENCY_URGENT",'
        '"identity":"IDENTITY_VERIFIED","attributes":{"coverage":"in_network"},"signals":["x"],'
        '"transferFrom":{"queueId":"q"}}',
        '{"agentId":"a-1","team":"T","skills":[{"skill":"billing","proficiency":3}],'
        '"channels":[{"channel":"CHANNEL_CHAT","capacity":2}]}',
        '{"reservationId":"r-1","requestId":"x","reason":"RELEASE_REASON_CANCELLED"}',
        '{"queueId":"billing","states":["AGENT_STATE_AVAILABLE"],"pageSize":10,"pageToken":"agents:3"}',
        "{}",
    ]
    for i, body in enumerate(bodies):
        write("json_request", str(i), bytes([i]) + body.encode())


if __name__ == "__main__":
    decode_request_seeds()
    parser_seeds()
    engine_seeds()
    json_seeds()
