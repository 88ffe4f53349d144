//! Git access: fetch a repository into a cache, read a file at a commit,
//! list the paths changed between two commits.
//!
//! Everything here blocks (libgit2). From async code, wrap calls in
//! [`run_blocking`], which moves them onto tokio's blocking pool; the types
//! are `Send` so they can travel there.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Once, OnceLock};
use std::time::{Duration, Instant};

use git2::{
    AutotagOption, Cred, CredentialType, DiffOptions, FetchOptions, ObjectType, Oid,
    RemoteCallbacks, Repository,
};

use crate::config::Secret;
use crate::domain::CommitSha;
use crate::spec::{CheckContext, ConvoySpec, SpecError, parse_spec_bytes};

/// The user GitHub expects with an installation token as password.
pub const TOKEN_USER: &str = "x-access-token";
/// How long a whole fetch may take before it is abandoned.
pub const FETCH_DEADLINE: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GitError {
    /// The server refused the credentials (or wanted some and got none).
    #[error("authentication failed for {url}: {detail}")]
    Auth { url: String, detail: String },
    /// The server could not be reached or the transfer failed.
    #[error("cannot fetch {url}: {detail}")]
    Fetch { url: String, detail: String },
    /// A revision (name or sha) that does not exist here.
    #[error("unknown revision `{0}`")]
    UnknownRevision(String),
    /// Anything else libgit2 reports.
    #[error("git: {0}")]
    Other(String),
}

impl From<git2::Error> for GitError {
    fn from(e: git2::Error) -> Self {
        GitError::Other(e.message().to_string())
    }
}

/// Runs blocking git work on tokio's blocking pool.
pub async fn run_blocking<T, F>(f: F) -> Result<T, GitError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, GitError> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(GitError::Other(format!("git task failed: {e}"))))
}

/// Fills the `{owner}` and `{repo}` placeholders of `github.git_url`.
pub fn repo_url(template: &str, owner: &str, repo: &str) -> String {
    template.replace("{owner}", owner).replace("{repo}", repo)
}

/// libgit2's network timeouts are process-wide and default to none: a
/// server that accepts and then says nothing would hang a worker forever.
fn set_network_timeouts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: these only write two integers in libgit2's global settings;
        // `Once` keeps this to one call, made before this module's first
        // network operation.
        unsafe {
            let _ = git2::opts::set_server_connect_timeout_in_milliseconds(15_000);
            let _ = git2::opts::set_server_timeout_in_milliseconds(60_000);
        }
    });
}

fn repo_lock(path: &Path) -> Arc<Mutex<()>> {
    static LOCKS: OnceLock<Mutex<HashMap<PathBuf, Arc<Mutex<()>>>>> = OnceLock::new();
    let mut locks = LOCKS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    locks.entry(path.to_path_buf()).or_default().clone()
}

/// A bare clone per repository under a cache directory (the caller passes
/// `<data_dir>/git`).
#[derive(Clone, Debug)]
pub struct RepoCache {
    root: PathBuf,
}

impl RepoCache {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        RepoCache { root: root.into() }
    }

    /// Where `owner/repo` is kept. Names are reduced to safe characters so
    /// a hostile name cannot escape the cache directory.
    pub fn path_for(&self, owner: &str, repo: &str) -> PathBuf {
        let clean = |s: &str| -> String {
            let c: String = s
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            if c.is_empty() || c.chars().all(|c| c == '.') {
                "_".into()
            } else {
                c
            }
        };
        self.root
            .join(clean(owner))
            .join(format!("{}.git", clean(repo)))
    }

    /// Opens the cached clone of `owner/repo`, creating it if needed, and
    /// fetches from `url` unless every commit in `wanted` is already there.
    /// `token` is sent as the password of `x-access-token` when the server
    /// asks for credentials.
    pub fn sync(
        &self,
        owner: &str,
        repo: &str,
        url: &str,
        token: Option<&Secret>,
        wanted: &[CommitSha],
    ) -> Result<GitRepo, GitError> {
        self.sync_with(owner, repo, url, token, wanted, false)
    }

    /// Like [`RepoCache::sync`], but fetches the branches even when every
    /// wanted commit is here already: for a branch's head as it is now.
    /// Wanted commits the remote does not have are left missing, not an
    /// error; the caller asks for them again where it needs them.
    pub fn refresh(
        &self,
        owner: &str,
        repo: &str,
        url: &str,
        token: Option<&Secret>,
        wanted: &[CommitSha],
    ) -> Result<GitRepo, GitError> {
        self.sync_with(owner, repo, url, token, wanted, true)
    }

    fn sync_with(
        &self,
        owner: &str,
        repo: &str,
        url: &str,
        token: Option<&Secret>,
        wanted: &[CommitSha],
        refresh: bool,
    ) -> Result<GitRepo, GitError> {
        let path = self.path_for(owner, repo);
        // Two workers fetching into one clone would fight over its ref
        // locks: one at a time per repository (within this process).
        let lock = repo_lock(&path);
        let _guard = lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let repository = match Repository::open_bare(&path) {
            Ok(r) => r,
            Err(_) => {
                std::fs::create_dir_all(&path).map_err(|e| {
                    GitError::Other(format!("cannot create {}: {e}", path.display()))
                })?;
                Repository::init_bare(&path)?
            }
        };
        let git = GitRepo { repo: repository };
        if refresh || wanted.is_empty() || !wanted.iter().all(|c| git.has_commit(c)) {
            git.fetch(url, token, wanted)?;
        }
        if !refresh && let Some(missing) = wanted.iter().find(|c| !git.has_commit(c)) {
            return Err(GitError::UnknownRevision(missing.to_string()));
        }
        Ok(git)
    }
}

/// What went wrong reading `convoy.yml` at a commit; each is a reportable
/// user error, none a crash.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecLoadError {
    #[error("convoy.yml not found at {0}")]
    Missing(CommitSha),
    #[error("convoy.yml at {commit} is invalid ({} error{})", errors.len(), if errors.len() == 1 { "" } else { "s" })]
    Invalid {
        commit: CommitSha,
        errors: Vec<SpecError>,
    },
    #[error(transparent)]
    Git(#[from] GitError),
}

/// An open repository (a cached bare clone or a work tree).
pub struct GitRepo {
    repo: Repository,
}

impl GitRepo {
    /// Opens a repository at `path` or above it (a work tree or a bare one).
    pub fn open(path: &Path) -> Result<GitRepo, GitError> {
        let repo = Repository::discover(path).map_err(|e| {
            GitError::Other(format!(
                "{}: not a git repository: {}",
                path.display(),
                e.message()
            ))
        })?;
        Ok(GitRepo { repo })
    }

    pub fn has_commit(&self, sha: &CommitSha) -> bool {
        Oid::from_str(sha.as_str())
            .ok()
            .and_then(|oid| self.repo.find_commit(oid).ok())
            .is_some()
    }

    /// A revision (`HEAD`, a branch, a sha, `HEAD~2`) to its commit sha.
    pub fn resolve(&self, rev: &str) -> Result<CommitSha, GitError> {
        let obj = self
            .repo
            .revparse_single(rev)
            .map_err(|_| GitError::UnknownRevision(rev.to_string()))?;
        let commit = obj
            .peel_to_commit()
            .map_err(|_| GitError::UnknownRevision(rev.to_string()))?;
        Ok(CommitSha::new(commit.id().to_string()))
    }

    /// The commit a reference names, by its full name (no revision
    /// syntax: a branch's name is taken as it is).
    pub fn reference_commit(&self, name: &str) -> Result<CommitSha, GitError> {
        let commit = self
            .repo
            .find_reference(name)
            .and_then(|r| r.peel_to_commit())
            .map_err(|_| GitError::UnknownRevision(name.to_string()))?;
        Ok(CommitSha::new(commit.id().to_string()))
    }

    /// The first parent of a commit; `None` for a root commit.
    pub fn parent(&self, sha: &CommitSha) -> Result<Option<CommitSha>, GitError> {
        let commit = self.commit(sha)?;
        Ok(commit
            .parent_ids()
            .next()
            .map(|p| CommitSha::new(p.to_string())))
    }

    /// The newest commit both `a` and `b` descend from, if any.
    pub fn merge_base(&self, a: &CommitSha, b: &CommitSha) -> Result<Option<CommitSha>, GitError> {
        let (a, b) = (self.commit(a)?.id(), self.commit(b)?.id());
        match self.repo.merge_base(a, b) {
            Ok(oid) => Ok(Some(CommitSha::new(oid.to_string()))),
            Err(e) if e.code() == git2::ErrorCode::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn commit(&self, sha: &CommitSha) -> Result<git2::Commit<'_>, GitError> {
        let oid =
            Oid::from_str(sha.as_str()).map_err(|_| GitError::UnknownRevision(sha.to_string()))?;
        self.repo
            .find_commit(oid)
            .map_err(|_| GitError::UnknownRevision(sha.to_string()))
    }

    /// The content of `path` at `commit`, with the file's full size; `None`
    /// if there is no such file. At most `max_bytes + 1` bytes are copied,
    /// enough to tell that a file is too big.
    pub fn read_file(
        &self,
        commit: &CommitSha,
        path: &str,
        max_bytes: usize,
    ) -> Result<Option<(Vec<u8>, usize)>, GitError> {
        let tree = self.commit(commit)?.tree()?;
        let entry = match tree.get_path(Path::new(path)) {
            Ok(e) => e,
            Err(e) if e.code() == git2::ErrorCode::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        if entry.kind() != Some(ObjectType::Blob) {
            return Ok(None);
        }
        let blob = self.repo.find_blob(entry.id())?;
        let content = blob.content();
        let copied = content[..content.len().min(max_bytes.saturating_add(1))].to_vec();
        Ok(Some((copied, content.len())))
    }

    /// Reads and validates `convoy.yml` at `commit`.
    pub fn read_spec(
        &self,
        commit: &CommitSha,
        ctx: &CheckContext,
    ) -> Result<ConvoySpec, SpecLoadError> {
        let (bytes, size) = self
            .read_file(commit, crate::plan::impact::SPEC_FILE, ctx.limits.max_bytes)?
            .ok_or_else(|| SpecLoadError::Missing(commit.clone()))?;
        let invalid = |errors| SpecLoadError::Invalid {
            commit: commit.clone(),
            errors,
        };
        if size > ctx.limits.max_bytes {
            return Err(invalid(vec![SpecError {
                pos: crate::spec::Pos::START,
                message: format!(
                    "file is {size} bytes; at most {} bytes are allowed",
                    ctx.limits.max_bytes
                ),
            }]));
        }
        parse_spec_bytes(&bytes, ctx).map_err(invalid)
    }

    /// Paths changed from `from` to `to`, sorted, without repeats; a rename
    /// counts as both its old and its new path. A submodule whose commit
    /// changed is its folder with a trailing `/` (`vendor/lib/`): what
    /// changed inside it is another repository's, so all of it may have.
    pub fn changed_paths(&self, from: &CommitSha, to: &CommitSha) -> Result<Vec<String>, GitError> {
        let old = self.commit(from)?.tree()?;
        let new = self.commit(to)?.tree()?;
        let mut opts = DiffOptions::new();
        opts.include_typechange(true);
        let mut diff = self
            .repo
            .diff_tree_to_tree(Some(&old), Some(&new), Some(&mut opts))?;
        // Rename detection makes a move show up as one delta with both
        // paths; without it, it would be a delete plus an add (also both
        // paths). Either way both names are reported.
        let mut find = git2::DiffFindOptions::new();
        find.renames(true);
        diff.find_similar(Some(&mut find))?;
        let mut paths = std::collections::BTreeSet::new();
        for delta in diff.deltas() {
            for file in [delta.old_file(), delta.new_file()] {
                if !file.exists() {
                    continue; // the side of an added or deleted path that is not there
                }
                // Lossy, not skipped: a name that is not UTF-8 still lies
                // under its folder, which is what `paths` globs match.
                if let Some(p) = file.path() {
                    let mut path = p.to_string_lossy().into_owned();
                    if file.mode() == git2::FileMode::Commit {
                        path.push('/');
                    }
                    paths.insert(path);
                }
            }
        }
        Ok(paths.into_iter().collect())
    }

    /// Fetches branches and tags from `url`, then any `wanted` commit still
    /// missing by its id. Credentials are offered once: a rejected token
    /// fails at once instead of libgit2 asking again forever.
    fn fetch(
        &self,
        url: &str,
        token: Option<&Secret>,
        wanted: &[CommitSha],
    ) -> Result<(), GitError> {
        set_network_timeouts();
        let mut remote = self.repo.remote_anonymous(url)?;
        let mut refspecs = vec!["+refs/heads/*:refs/remotes/origin/*".to_string()];
        let result = self.fetch_once(&mut remote, url, token, &refspecs);
        result?;
        let missing: Vec<String> = wanted
            .iter()
            .filter(|c| !self.has_commit(c))
            .map(|c| c.to_string())
            .collect();
        if !missing.is_empty() {
            // Commits no branch reaches (a PR head): ask for them by id, as
            // GitHub allows. A server that refuses leaves them missing, which
            // the caller reports.
            refspecs = missing;
            let _ = self.fetch_once(&mut remote, url, token, &refspecs);
        }
        if wanted.iter().any(|c| !self.has_commit(c)) {
            // A server that does not serve commits by id still advertises
            // pull request heads (GitHub and GitHub Enterprise do).
            let pulls = vec!["+refs/pull/*/head:refs/convoy/pull/*".to_string()];
            let _ = self.fetch_once(&mut remote, url, token, &pulls);
        }
        Ok(())
    }

    fn fetch_once(
        &self,
        remote: &mut git2::Remote<'_>,
        url: &str,
        token: Option<&Secret>,
        refspecs: &[String],
    ) -> Result<(), GitError> {
        let deadline = Instant::now() + FETCH_DEADLINE;
        let mut offered = 0u32;
        let mut callbacks = RemoteCallbacks::new();
        callbacks.credentials(|_url, _user, allowed| {
            offered += 1;
            match token {
                Some(t)
                    if offered == 1 && allowed.contains(CredentialType::USER_PASS_PLAINTEXT) =>
                {
                    Cred::userpass_plaintext(TOKEN_USER, t.expose())
                }
                Some(_) if offered > 1 => {
                    Err(git2::Error::from_str("the server rejected the token"))
                }
                Some(_) => Err(git2::Error::from_str(
                    "the server wants credentials other than a user and password",
                )),
                None => Err(git2::Error::from_str(
                    "the server wants credentials and no token was given",
                )),
            }
        });
        callbacks.transfer_progress(|_| Instant::now() < deadline);
        let mut opts = FetchOptions::new();
        opts.remote_callbacks(callbacks);
        opts.download_tags(AutotagOption::None);
        // A branch deleted on the remote goes here too, rather than
        // resolving for ever to its last commit (the commits stay).
        opts.prune(git2::FetchPrune::On);
        let refs: Vec<&str> = refspecs.iter().map(String::as_str).collect();
        remote.fetch(&refs, Some(&mut opts), None).map_err(|e| {
            let detail = e.message().to_string();
            let auth = e.class() == git2::ErrorClass::Http && detail.contains("401")
                || e.code() == git2::ErrorCode::Auth
                || detail.contains("rejected the token")
                || detail.contains("wants credentials")
                || detail.contains("authentication");
            let shown = redact(url);
            if auth {
                GitError::Auth { url: shown, detail }
            } else if Instant::now() >= deadline {
                GitError::Fetch {
                    url: shown,
                    detail: format!("gave up after {}s", FETCH_DEADLINE.as_secs()),
                }
            } else {
                GitError::Fetch { url: shown, detail }
            }
        })
    }
}

/// A URL fit for an error message: user info removed.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((_, host)) => format!("{scheme}://{host}{path}"),
        None => url.to_string(),
    }
}

/// Everything the planner needs from git for one commit, read in one go.
#[derive(Debug)]
pub struct ChangeSet {
    pub commit: CommitSha,
    pub previous_commit: Option<CommitSha>,
    /// `convoy.yml` at `commit`.
    pub spec: Result<ConvoySpec, SpecLoadError>,
    /// `convoy.yml` at `previous_commit`, if there is one and it is valid.
    pub previous_spec: Option<ConvoySpec>,
    /// `None` on a first rollout (no previous commit).
    pub changed_paths: Option<Vec<String>>,
}

impl ChangeSet {
    /// Reads the two commits' `convoy.yml` and the changed paths.
    pub fn read(
        repo: &GitRepo,
        commit: CommitSha,
        previous_commit: Option<CommitSha>,
        ctx: &CheckContext,
    ) -> Result<ChangeSet, GitError> {
        let spec = repo.read_spec(&commit, ctx);
        if let Err(SpecLoadError::Git(e)) = &spec {
            return Err(e.clone());
        }
        let (previous_spec, changed_paths) = match &previous_commit {
            None => (None, None),
            Some(prev) => (
                repo.read_spec(prev, ctx).ok(),
                Some(repo.changed_paths(prev, &commit)?),
            ),
        };
        Ok(ChangeSet {
            commit,
            previous_commit,
            spec,
            previous_spec,
            changed_paths,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_cache_paths() {
        assert_eq!(
            repo_url("https://github.com/{owner}/{repo}.git", "acme", "app"),
            "https://github.com/acme/app.git"
        );
        let c = RepoCache::new("/data/git");
        assert_eq!(
            c.path_for("acme", "app"),
            PathBuf::from("/data/git/acme/app.git")
        );
        assert_eq!(
            c.path_for("..", "../x"),
            PathBuf::from("/data/git/_/.._x.git")
        );
        assert_eq!(
            redact("https://u:p@h.example/x.git"),
            "https://h.example/x.git"
        );
        assert_eq!(redact("file:///tmp/x"), "file:///tmp/x");
    }
}
