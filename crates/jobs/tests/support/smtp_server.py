"""A real SMTP server for crates/jobs/tests/notify.rs (aiosmtpd).

Usage: smtp_server.py PORT OUT_JSON [CERT KEY]
With CERT/KEY it requires STARTTLS. Logins: backup/secret. Writes each received message to
OUT_JSON; prints 'ready' when listening; stops when stdin closes.
"""
import json
import warnings
import ssl
import sys

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

warnings.simplefilter("ignore")


class Handler:
    async def handle_DATA(self, server, session, envelope):
        with open(sys.argv[2], "w") as f:
            json.dump(
                {
                    "from": envelope.mail_from,
                    "to": envelope.rcpt_tos,
                    "data": envelope.content.decode("utf8", "replace"),
                    "authenticated": bool(session.authenticated),
                    "tls": session.ssl is not None,
                },
                f,
            )
        return "250 OK"


def authenticator(server, session, envelope, mechanism, auth_data):
    ok = (
        isinstance(auth_data, LoginPassword)
        and auth_data.login == b"backup"
        and auth_data.password == b"secret"
    )
    return AuthResult(success=ok)


kwargs = {}
if len(sys.argv) > 4:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(sys.argv[3], sys.argv[4])
    kwargs = {"tls_context": ctx, "require_starttls": True}
else:
    kwargs = {"auth_require_tls": False}
controller = Controller(
    Handler(),
    hostname="127.0.0.1",
    port=int(sys.argv[1]),
    authenticator=authenticator,
    auth_required=True,
    server_hostname="localhost",
    **kwargs,
)
controller.start()
print("ready", flush=True)
sys.stdin.read()
controller.stop()
