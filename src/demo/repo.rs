//! The demo's scratch repository: a real git repository (written with
//! libgit2, so no `git` program is needed) that convoy fetches over
//! `file://`, exactly as it fetches from GitHub.

use std::path::{Path, PathBuf};

use git2::{Oid, Repository, Signature};

use crate::domain::CommitSha;

pub struct ScratchRepo {
    repo: Repository,
    pub path: PathBuf,
}

fn sha(oid: Oid) -> CommitSha {
    CommitSha::new(oid.to_string())
}

impl ScratchRepo {
    /// A new repository at `<root>/<owner>/<name>` with `main` as its
    /// default branch.
    pub fn init(root: &Path, owner: &str, name: &str) -> Result<ScratchRepo, String> {
        let path = root.join(owner).join(name);
        std::fs::create_dir_all(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut opts = git2::RepositoryInitOptions::new();
        opts.initial_head("main");
        let repo = Repository::init_opts(&path, &opts).map_err(|e| e.message().to_owned())?;
        Ok(ScratchRepo { repo, path })
    }

    /// `git_url` for convoy: a template over the folder above owners.
    pub fn url_template(root: &Path) -> String {
        format!("file://{}/{{owner}}/{{repo}}", root.display())
    }

    /// Writes the files and commits them on `branch` with these parents
    /// (none: the branch's tip, if any). Returns the commit.
    pub fn commit(
        &self,
        branch: &str,
        files: &[(&str, &str)],
        message: &str,
        author: &str,
        parents: Option<&[&CommitSha]>,
    ) -> Result<CommitSha, String> {
        let e = |e: git2::Error| e.message().to_owned();
        for (name, content) in files {
            let file = self.path.join(name);
            if let Some(dir) = file.parent() {
                std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
            }
            std::fs::write(&file, content).map_err(|e| e.to_string())?;
        }
        let mut index = self.repo.index().map_err(e)?;
        index
            .add_all(["*"], git2::IndexAddOption::DEFAULT, None)
            .map_err(e)?;
        index.write().map_err(e)?;
        let tree = self
            .repo
            .find_tree(index.write_tree().map_err(e)?)
            .map_err(e)?;
        let sig = Signature::now(author, &format!("{author}@acme.example")).map_err(e)?;
        let refname = format!("refs/heads/{branch}");
        let parent_commits: Vec<git2::Commit> = match parents {
            Some(list) => list
                .iter()
                .map(|p| {
                    Oid::from_str(p.as_str())
                        .and_then(|oid| self.repo.find_commit(oid))
                        .map_err(e)
                })
                .collect::<Result<_, _>>()?,
            None => match self.repo.refname_to_id(&refname) {
                Ok(oid) => vec![self.repo.find_commit(oid).map_err(e)?],
                Err(_) => vec![],
            },
        };
        let refs: Vec<&git2::Commit> = parent_commits.iter().collect();
        let oid = self
            .repo
            .commit(None, &sig, &sig, message, &tree, &refs)
            .map_err(e)?;
        self.repo
            .reference(&refname, oid, true, message)
            .map_err(e)?;
        Ok(sha(oid))
    }

    /// Points the work tree's files at `branch` (after committing on
    /// another branch, so the next commit starts from the right files).
    pub fn checkout(&self, branch: &str) -> Result<(), String> {
        let e = |e: git2::Error| e.message().to_owned();
        let refname = format!("refs/heads/{branch}");
        let obj = self.repo.revparse_single(&refname).map_err(e)?;
        self.repo
            .checkout_tree(&obj, Some(git2::build::CheckoutBuilder::new().force()))
            .map_err(e)?;
        self.repo.set_head(&refname).map_err(e)?;
        Ok(())
    }
}
