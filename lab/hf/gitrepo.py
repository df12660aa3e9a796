"""Read-only view of a bare git repo whose large files are git-lfs pointers (stdlib + the git CLI).

A bare repo keeps its LFS store in <bare>/lfs/objects/<aa>/<bb>/<sha256>. Commit trees are immutable,
so parsed trees are cached by commit sha; refs are re-read on every lookup so a rebuilt repo is seen
without restarting the server.
"""
import os
import re
import subprocess
import threading
from datetime import datetime, timezone

SHA1_RE = re.compile(r"^[0-9a-f]{40}$")
LFS_POINTER_RE = re.compile(
    rb"^version https://git-lfs\.github\.com/spec/v1\noid sha256:([0-9a-f]{64})\nsize ([0-9]+)\n$"
)
MAX_POINTER_SIZE = 1024  # git-lfs never writes a pointer larger than this


class GitRepo:
    def __init__(self, path):
        self.path = path
        self._trees = {}
        self._lock = threading.Lock()

    def _git(self, *args, stdin=None):
        # safe.directory: the server may run as another user than the one who built the repos.
        cmd = ["git", "-c", "safe.directory=*", "--git-dir", self.path, *args]
        return subprocess.run(cmd, input=stdin, capture_output=True, check=True).stdout

    @property
    def gated(self):
        return os.path.exists(os.path.join(self.path, "hf-gated"))

    def refs(self):
        """{'branches': {name: sha}, 'tags': {name: sha}}; annotated tags are peeled to their commit."""
        out = self._git("for-each-ref", "--format=%(refname)%00%(objectname)%00%(*objectname)",
                        "refs/heads", "refs/tags").decode()
        refs = {"branches": {}, "tags": {}}
        for line in out.splitlines():
            name, obj, peeled = line.split("\0")
            kind, _unused, short = name[len("refs/"):].partition("/")
            refs["branches" if kind == "heads" else "tags"][short] = peeled or obj
        return refs

    def resolve(self, revision):
        """Branch, tag or full commit sha -> commit sha, or None. Never evaluates rev expressions
        (main~1, HEAD^...): only exact ref names and existing full shas are accepted."""
        if SHA1_RE.match(revision):
            return revision if self._is_commit(revision) else None
        refs = self.refs()
        return refs["branches"].get(revision) or refs["tags"].get(revision)

    def _is_commit(self, sha):
        try:
            return self._git("cat-file", "-t", sha).strip() == b"commit"
        except subprocess.CalledProcessError:
            return False

    def commit_time(self, sha):
        return _iso(int(self._git("show", "-s", "--format=%ct", sha).strip()))

    def created_time(self):
        roots = self._git("rev-list", "--max-parents=0", "--format=%ct", "--all").decode().split()
        return _iso(min(int(t) for t in roots if t.isdigit()))

    def tree(self, sha):
        """All entries of a commit, sorted by path: dicts with path, type (file|directory), oid, size and,
        for LFS files, lfs = {sha256, size, pointer_size} (size is then the real file size)."""
        with self._lock:
            if sha in self._trees:
                return self._trees[sha]
        entries = []
        for record in self._git("ls-tree", "-r", "-t", "-l", "-z", "--full-tree", sha).split(b"\0"):
            if not record:
                continue
            meta, path = record.split(b"\t", 1)
            _mode, kind, oid, size = meta.decode().split()
            if kind == "tree":
                entries.append({"path": path.decode(), "type": "directory", "oid": oid, "size": 0})
            elif kind == "blob":
                entries.append({"path": path.decode(), "type": "file", "oid": oid, "size": int(size)})
        self._attach_lfs(entries)
        entries.sort(key=lambda e: e["path"])
        with self._lock:
            self._trees[sha] = entries
        return entries

    def _attach_lfs(self, entries):
        small = [e for e in entries if e["type"] == "file" and e["size"] <= MAX_POINTER_SIZE]
        if not small:
            return
        # One `cat-file --batch` for every pointer-sized blob instead of a process per file.
        out = self._git("cat-file", "--batch", stdin="".join(e["oid"] + "\n" for e in small).encode())
        pos = 0
        for entry in small:
            header_end = out.index(b"\n", pos)
            size = int(out[pos:header_end].split()[2])
            body = out[header_end + 1:header_end + 1 + size]
            pos = header_end + 1 + size + 1
            match = LFS_POINTER_RE.match(body)
            if match:
                entry["lfs"] = {"sha256": match.group(1).decode(), "size": int(match.group(2)),
                                "pointer_size": entry["size"]}
                entry["size"] = int(match.group(2))

    def blob(self, oid):
        return self._git("cat-file", "blob", oid)

    def lfs_object(self, sha256):
        return os.path.join(self.path, "lfs", "objects", sha256[:2], sha256[2:4], sha256)


def _iso(epoch):
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")
