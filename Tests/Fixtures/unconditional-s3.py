#!/usr/bin/env python3
"""A stand-in for an S3-compatible store that ignores conditional writes (If-None-Match, If-Match), as some do:
the one thing Ceph's RADOS Gateway, which the other tests use, cannot show. Objects live in memory; signatures
are not checked. Serves single PUTs, ranged GETs, HEAD, DELETE, ListObjectsV2 and an empty ListMultipartUploads.
Writes its port into PORTFILE, then serves until killed.  usage: unconditional-s3.py PORTFILE"""
import hashlib
import http.server
import re
import sys
import threading
import urllib.parse

objects = {}
lock = threading.Lock()


class Store(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def parts(self):
        url = urllib.parse.urlsplit(self.path)
        path = urllib.parse.unquote(url.path).lstrip("/")
        bucket, _, key = path.partition("/")
        return bucket, key, urllib.parse.parse_qs(url.query, keep_blank_values=True)

    def answer(self, status, body=b"", headers=None):
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self):
        bucket, key, _ = self.parts()
        if not key:
            return self.answer(200)
        with lock:
            data = objects.get((bucket, key))
        if data is None:
            return self.answer(404)
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("ETag", '"%s"' % hashlib.md5(data).hexdigest())
        self.end_headers()

    def do_GET(self):
        bucket, key, query = self.parts()
        if not key and "uploads" in query:
            return self.answer(200, b"<ListMultipartUploadsResult></ListMultipartUploadsResult>")
        if not key:
            prefix = query.get("prefix", [""])[0]
            with lock:
                keys = sorted((k, len(v)) for (b, k), v in objects.items() if b == bucket and k.startswith(prefix))
            xml = "<ListBucketResult><IsTruncated>false</IsTruncated>" + "".join(
                "<Contents><Key>%s</Key><Size>%d</Size></Contents>" % (k, n) for k, n in keys) + "</ListBucketResult>"
            return self.answer(200, xml.encode())
        with lock:
            data = objects.get((bucket, key))
        if data is None:
            return self.answer(404, b"<Error><Code>NoSuchKey</Code><Message>no such key</Message></Error>")
        etag = {"ETag": '"%s"' % hashlib.md5(data).hexdigest()}
        m = re.match(r"bytes=(\d+)-(\d+)", self.headers.get("Range", ""))
        if m:
            start, end = int(m.group(1)), int(m.group(2))
            if start >= len(data):
                return self.answer(416)
            return self.answer(206, data[start:end + 1], etag)
        return self.answer(200, data, etag)

    def do_PUT(self):
        bucket, key, query = self.parts()
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if not key:
            return self.answer(200)
        if query:
            return self.answer(501, b"<Error><Code>NotImplemented</Code><Message>multipart</Message></Error>")
        with lock:
            objects[(bucket, key)] = body  # If-None-Match and If-Match ignored: the point of this store
        self.answer(200, b"", {"ETag": '"%s"' % hashlib.md5(body).hexdigest()})

    def do_DELETE(self):
        bucket, key, _ = self.parts()
        with lock:
            objects.pop((bucket, key), None)
        self.answer(204)

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.answer(501, b"<Error><Code>NotImplemented</Code><Message>multipart</Message></Error>")


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Store)
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(str(server.server_address[1]))
__import__("os").rename(sys.argv[1] + ".tmp", sys.argv[1])
server.serve_forever()
