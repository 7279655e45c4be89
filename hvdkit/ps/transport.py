"""ZeroMQ sockets of the parameter servers: ROUTER on a server, one DEALER per server on a worker.

ZeroMQ reconnects by itself and a dead peer costs nothing but its
unanswered requests, which is why the parameter-server traffic goes here and
not through MPI (whose failure model ends the whole job). Addresses are
explicit ``tcp://HOST:PORT`` (a server listens on the one interface the job
uses, never ``*``). The job secret reaches every process through
``HVDKIT_PS_SECRET`` (hex), set by the launcher.
"""
import os
import secrets
import socket

import zmq

__all__ = ["SECRET_ENV", "bind_router", "connect_dealer", "free_addresses", "job_key", "new_secret", "recv",
           "send"]

SECRET_ENV = "HVDKIT_PS_SECRET"


def new_secret():
    return secrets.token_hex(32)


def job_key(environ=os.environ):
    """The job's MAC key from ``HVDKIT_PS_SECRET``, or None (messages unsigned)."""
    value = environ.get(SECRET_ENV)
    if not value:
        return None
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise ValueError(f"{SECRET_ENV} must be hex digits, got {len(value)} characters that are not") from None


def _check_address(address):
    if not (isinstance(address, str) and address.startswith("tcp://") and address.rpartition(":")[2].isdigit()):
        raise ValueError(f"parameter-server address {address!r} must look like tcp://HOST:PORT")
    if "*" in address or "0.0.0.0" in address:
        raise ValueError(f"parameter-server address {address!r} names every interface; name the one the job uses")


def bind_router(context, address):
    _check_address(address)
    sock = context.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 0)  # a reply to a worker that went away is dropped, not an error
    sock.bind(address)
    return sock


def connect_dealer(context, address):
    _check_address(address)
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RECONNECT_IVL, 100)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
    sock.connect(address)
    return sock


def send(sock, ident, frames, flags=0):
    """Frames of one message after the ROUTER identity (or none, on a DEALER); arrays without a copy."""
    sock.send_multipart(([ident] if ident is not None else []) + list(frames), flags=flags, copy=False)


def recv(sock, flags=0, router=True):
    """(identity or None, frames) of one message; frames are zmq.Frame objects viewed without a copy."""
    frames = sock.recv_multipart(flags, copy=False)
    return (frames[0].bytes, frames[1:]) if router else (None, frames)


def free_addresses(count, host="127.0.0.1"):
    """``count`` tcp addresses on ``host`` with ports the OS had free a moment ago."""
    holders, addresses = [], []
    for _ in range(count):
        holder = socket.socket()
        holder.bind((host, 0))
        holders.append(holder)
        addresses.append(f"tcp://{host}:{holder.getsockname()[1]}")
    for holder in holders:
        holder.close()
    return addresses
