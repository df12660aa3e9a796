#!/usr/bin/env python3
"""A small Hugging Face Hub-compatible HTTP server over the bare git+LFS repos of build_repos.py.

    python lab/hf/serve.py --root STATE_DIR --host 127.0.0.1 --port 8090 --access-log FILE \
        [--gated-token-file FILE] [--throttle-bps N]

Serves what huggingface_hub's model_info / list_repo_tree / list_repo_refs / hf_hub_download /
snapshot_download use (see README.md for the endpoints and error codes). Stdlib only, binds only the
given address; --port 0 picks a free port. The first stdout line is `serving http://HOST:PORT`.
The access log gets one line per request: `TIME CLIENT METHOD PATH STATUS BYTES` (no headers, so
never a token).
"""
import argparse
import hmac
import io
import json
import os
import re
import socket
import sys
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gitrepo import GitRepo  # noqa: E402

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")
CHUNK = 64 * 1024


class HubError(Exception):
    """An error answered the way the Hub does: X-Error-Code / X-Error-Message headers + JSON body."""

    def __init__(self, status, message, code=None, headers=None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


class HubServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root, host, port, access_log, tokens=(), throttle_bps=0):
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host, port), HubHandler)
        self.repos_dir = os.path.join(root, "repos")
        self.tokens = [t.encode() for t in tokens]
        self.throttle_bps = throttle_bps
        self._log = open(access_log, "a", encoding="utf-8")
        self._log_lock = threading.Lock()
        self._repos = {}

    def repo(self, org, name):
        if not (NAME_RE.match(org) and NAME_RE.match(name)):
            return None
        path = os.path.join(self.repos_dir, org, name + ".git")
        if not os.path.isdir(path):
            return None
        return self._repos.setdefault(path, GitRepo(path))

    def access(self, client, method, path, status, sent):
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        with self._log_lock:
            self._log.write(f"{stamp} {client} {method} {path} {status} {sent}\n")
            self._log.flush()


class HubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the client reuses connections
    server_version = "gpufleet-hf"

    def log_message(self, format, *args):  # replaced by the access log
        pass

    def do_GET(self):
        self._handle()

    def do_HEAD(self):
        self._handle()

    def _handle(self):
        self._status, self._sent = 0, 0
        try:
            self._route()
        except HubError as err:
            self._error(err)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # client went away mid-body; _sent says how far it got
        except Exception as err:  # a bug or a broken repo: answer 500, keep serving
            print(f"error on {self.command} {self.path}: {err!r}", file=sys.stderr, flush=True)
            if not self._status:
                self._error(HubError(500, "Internal server error"))
            self.close_connection = True
        finally:
            self.server.access(self.client_address[0], self.command, self.path, self._status, self._sent)

    # -- routing ---------------------------------------------------------------------------------

    def _route(self):
        url = urlsplit(self.path)
        parts = [unquote(p) for p in url.path.split("/")[1:]]
        query = parse_qs(url.query)
        authed = self._authenticate()
        if parts[:2] == ["api", "models"] and len(parts) >= 4:
            repo = self._repo(parts[2], parts[3])
            rest = parts[4:]
            if not rest:
                return self._info(repo, parts[2], parts[3], "main", query)
            if rest[0] == "revision" and len(rest) == 2:
                return self._info(repo, parts[2], parts[3], rest[1], query)
            if rest[0] == "tree" and len(rest) >= 2:
                return self._tree(repo, rest[1], "/".join(rest[2:]).strip("/"), query)
            if rest == ["refs"]:
                return self._refs(repo)
        elif len(parts) >= 5 and parts[2] == "resolve":
            repo = self._repo(parts[0], parts[1])
            if repo.gated and not authed:
                raise HubError(401, f"Access to model {parts[0]}/{parts[1]} is restricted. You must have access "
                               "to it and be authenticated to access it. Please log in.", "GatedRepo")
            return self._resolve(repo, parts[3], "/".join(parts[4:]))
        raise HubError(404, "Not Found")

    def _authenticate(self):
        """False when anonymous, True for a valid bearer token; anything else is refused like the Hub does."""
        header = self.headers.get("Authorization")
        if not header:
            return False
        scheme, _unused, token = header.partition(" ")
        token = token.strip().encode()
        if scheme.lower() == "bearer" and any(hmac.compare_digest(token, t) for t in self.server.tokens):
            return True
        raise HubError(401, "Invalid credentials in Authorization header")

    def _repo(self, org, name):
        repo = self.server.repo(org, name)
        if repo is None:
            raise HubError(404, "Repository not found", "RepoNotFound")
        return repo

    @staticmethod
    def _commit(repo, revision):
        sha = repo.resolve(revision)
        if sha is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return sha

    # -- API -------------------------------------------------------------------------------------

    def _info(self, repo, org, name, revision, query):
        sha = self._commit(repo, revision)
        blobs = query.get("blobs", [""])[0].lower() in ("1", "true")
        siblings = []
        for entry in repo.tree(sha):
            if entry["type"] != "file":
                continue
            sibling = {"rfilename": entry["path"]}
            if blobs:
                sibling.update(size=entry["size"], blobId=entry["oid"])
                if "lfs" in entry:
                    lfs = entry["lfs"]
                    sibling["lfs"] = {"sha256": lfs["sha256"], "size": lfs["size"], "pointerSize": lfs["pointer_size"]}
            siblings.append(sibling)
        self._json({
            "_id": sha[:24], "id": f"{org}/{name}", "modelId": f"{org}/{name}", "author": org, "sha": sha,
            "lastModified": repo.commit_time(sha), "createdAt": repo.created_time(),
            "private": False, "gated": "manual" if repo.gated else False, "disabled": False,
            "downloads": 0, "likes": 0, "tags": [], "library_name": "transformers", "siblings": siblings,
        })

    def _tree(self, repo, revision, path, query):
        sha = self._commit(repo, revision)
        recursive = query.get("recursive", [""])[0].lower() in ("1", "true")
        entries = repo.tree(sha)
        if path and not any(e["path"] == path and e["type"] == "directory" for e in entries):
            raise HubError(404, f"{path} does not exist on {revision}", "EntryNotFound")
        prefix = path + "/" if path else ""
        listing = []
        for entry in entries:
            rel = entry["path"][len(prefix):]
            if not entry["path"].startswith(prefix) or (not recursive and "/" in rel):
                continue
            item = {"type": entry["type"], "oid": entry["oid"], "size": entry["size"], "path": entry["path"]}
            if "lfs" in entry:
                lfs = entry["lfs"]
                item["lfs"] = {"oid": lfs["sha256"], "size": lfs["size"], "pointerSize": lfs["pointer_size"]}
            listing.append(item)
        self._json(listing)

    def _refs(self, repo):
        refs = repo.refs()
        self._json({
            kind: [{"name": n, "ref": f"refs/{'heads' if kind == 'branches' else 'tags'}/{n}", "targetCommit": s}
                   for n, s in sorted(refs[kind].items())]
            for kind in ("branches", "tags")
        } | {"converts": []})

    # -- files -----------------------------------------------------------------------------------

    def _resolve(self, repo, revision, path):
        sha = self._commit(repo, revision)
        entry = next((e for e in repo.tree(sha) if e["path"] == path and e["type"] == "file"), None)
        if entry is None:
            raise HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": sha})
        size = entry["size"]
        headers = {"X-Repo-Commit": sha, "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        if "lfs" in entry:
            digest = entry["lfs"]["sha256"]
            headers.update({"ETag": f'"{digest}"', "X-Linked-Etag": f'"{digest}"', "X-Linked-Size": str(size)})

            def opener():
                return open(repo.lfs_object(digest), "rb")
        else:
            headers["ETag"] = f'"{entry["oid"]}"'

            def opener():
                return io.BytesIO(repo.blob(entry["oid"]))
        start, end, status = self._range(size, headers)
        headers["Content-Length"] = str(end - start)
        self._head(status, headers)
        if self.command == "HEAD":
            return
        with opener() as source:
            source.seek(start)
            self._copy(source, end - start)

    def _range(self, size, headers):
        """(start, end, status) for a single `Range: bytes=a-b` (what the client sends to resume)."""
        match = RANGE_RE.match(self.headers.get("Range", "").strip())
        if not match or match.groups() == ("", ""):
            return 0, size, 200
        first, last = match.groups()
        if first:
            start, end = int(first), min(int(last) + 1 if last else size, size)
        else:
            start, end = max(size - int(last), 0), size
        if start >= end:
            raise HubError(416, "Requested range not satisfiable", headers={"Content-Range": f"bytes */{size}"})
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        return start, end, 206

    def _copy(self, source, length):
        bps = self.server.throttle_bps
        chunk = max(1024, min(CHUNK, bps // 20)) if bps else CHUNK
        while length > 0:
            data = source.read(min(chunk, length))
            if not data:
                raise IOError("object shorter than its recorded size")
            self.wfile.write(data)
            self._sent += len(data)
            length -= len(data)
            if bps:
                time.sleep(len(data) / bps)

    # -- responses -------------------------------------------------------------------------------

    def _head(self, status, headers):
        self.send_response(status)
        self._status = status
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()

    def _body(self, status, body, headers):
        self._head(status, dict(headers, **{"Content-Length": str(len(body))}))
        if self.command != "HEAD":
            self.wfile.write(body)
            self._sent += len(body)

    def _json(self, data):
        self._body(200, json.dumps(data).encode(), {"Content-Type": "application/json"})

    def _error(self, err):
        headers = dict(err.headers, **{"Content-Type": "application/json", "X-Error-Message": err.message})
        if err.code:
            headers["X-Error-Code"] = err.code
        self._body(err.status, json.dumps({"error": err.message}).encode(), headers)


def read_tokens(path):
    with open(path, encoding="utf-8") as f:
        tokens = [line.strip() for line in f if line.strip()]
    if not tokens:
        raise SystemExit(f"{path}: no token in the gated token file")
    return tokens


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="state dir written by build_repos.py")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--access-log", required=True)
    parser.add_argument("--gated-token-file", default=os.environ.get("GPUFLEET_HF_TOKEN_FILE"),
                        help="file with the token(s), one a line, that open gated repos "
                             "(default: $GPUFLEET_HF_TOKEN_FILE; none: gated files are refused to all)")
    parser.add_argument("--throttle-bps", type=int, default=0, help="cap file bodies at N bytes/s (tests)")
    args = parser.parse_args()
    if not os.path.isdir(os.path.join(args.root, "repos")):
        raise SystemExit(f"{args.root}/repos not found: run build_repos.py --root {args.root} first")
    tokens = read_tokens(args.gated_token_file) if args.gated_token_file else ()
    server = HubServer(args.root, args.host, args.port, args.access_log, tokens, args.throttle_bps)
    print(f"serving http://{args.host}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
