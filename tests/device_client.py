"""A Django test client speaking to one connector's device API host."""

import base64

from django.test import Client

FORM = "application/x-www-form-urlencoded; charset=utf-8"


class DeviceClient:
    def __init__(self, connector, *, secure: bool = True, ip: str = "198.51.100.10"):
        self.host = f"{connector.id}.localhost"
        self.secure = secure
        self.ip = ip
        self.client = Client()

    def _extra(self, headers):
        return {"HTTP_HOST": self.host, "secure": self.secure, "REMOTE_ADDR": self.ip, **headers}

    def get(self, path, **headers):
        return self.client.get(path, **self._extra(headers))

    def post(self, path, body="", content_type=FORM, **headers):
        if isinstance(body, str):
            body = body.encode()
        extra = self._extra(headers)
        if content_type is None:
            return self.client.generic("POST", path, body, **extra)
        return self.client.generic("POST", path, body, content_type=content_type, **extra)

    def activate(self, identity, password=None, **headers):
        body = f"id={identity}" + (f"&password={password}" if password is not None else "")
        return self.post("/provision/activate", body, **headers)

    def write(self, token, body, **headers):
        return self.post("/onep:v1/stack/alias", body, HTTP_X_EXOSITE_CIK=token, **headers)

    def read(self, token, query, **headers):
        return self.get(f"/onep:v1/stack/alias?{query}", HTTP_X_EXOSITE_CIK=token, **headers)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
