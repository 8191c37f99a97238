//! Giving up root once the listeners are bound: `[server] user` and `group` (nginx's and
//! HAProxy's `user`). The process binds ports below 1024, opens its log files and reads its
//! certificates as root, then takes the user's identity for good, in every thread, before
//! it serves a request.

use std::ffi::{CStr, CString};

/// Why the process could not take the configured identity. It does not serve in that case.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    /// No such user.
    #[error("server.user: no user named {0:?} on this system")]
    NoUser(String),
    /// No such group.
    #[error("server.group: no group named {0:?} on this system")]
    NoGroup(String),
    /// Not root, and not already that user.
    #[error(
        "server.user = {user:?}: changing user needs root, and this process runs as uid {uid}; \
         start it as root, or leave server.user out and grant CAP_NET_BIND_SERVICE instead"
    )]
    NotRoot {
        /// The configured user.
        user: String,
        /// Who this process is.
        uid: u32,
    },
    /// A system call refused.
    #[error("cannot become user {user:?}: {step} failed: {source}")]
    Os {
        /// The configured user.
        user: String,
        /// The call.
        step: &'static str,
        /// Why.
        source: std::io::Error,
    },
}

/// A user's IDs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ids {
    /// User ID.
    pub uid: u32,
    /// Group ID.
    pub gid: u32,
}

/// Looks `user` (and `group`, else the user's primary group) up in the system's databases.
pub fn lookup(user: &str, group: Option<&str>) -> Result<Ids, PrivilegeError> {
    let c_user = CString::new(user).map_err(|_| PrivilegeError::NoUser(user.to_owned()))?;
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: getpwnam_r fills `pwd` with pointers into `buf`, both alive for the call and
    // the reads below; `result` is null when there is no such user.
    let (uid, primary) = unsafe {
        let mut pwd: libc::passwd = std::mem::zeroed();
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwnam_r(
            c_user.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        );
        if rc != 0 || result.is_null() {
            return Err(PrivilegeError::NoUser(user.to_owned()));
        }
        (pwd.pw_uid, pwd.pw_gid)
    };
    let gid = match group {
        None => primary,
        Some(group) => {
            let c_group = CString::new(group).map_err(|_| PrivilegeError::NoGroup(group.to_owned()))?;
            // SAFETY: as above, with getgrnam_r.
            unsafe {
                let mut grp: libc::group = std::mem::zeroed();
                let mut result: *mut libc::group = std::ptr::null_mut();
                let rc = libc::getgrnam_r(
                    c_group.as_ptr(),
                    &mut grp,
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    &mut result,
                );
                if rc != 0 || result.is_null() {
                    return Err(PrivilegeError::NoGroup(group.to_owned()));
                }
                grp.gr_gid
            }
        }
    };
    Ok(Ids { uid, gid })
}

/// Becomes `user` (with `group`, or the user's primary group, and the user's supplementary
/// groups) in every thread of the process. A process that already is that user (the
/// successor of a binary upgrade) has nothing to do.
pub fn become_user(user: &str, group: Option<&str>) -> Result<Ids, PrivilegeError> {
    let ids = lookup(user, group)?;
    // SAFETY: plain queries of this process's identity.
    let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
    if euid == ids.uid && egid == ids.gid {
        return Ok(ids);
    }
    if euid != 0 {
        return Err(PrivilegeError::NotRoot {
            user: user.to_owned(),
            uid: euid,
        });
    }
    let os = |step| PrivilegeError::Os {
        user: user.to_owned(),
        step,
        source: std::io::Error::last_os_error(),
    };
    let c_user = CString::new(user).map_err(|_| PrivilegeError::NoUser(user.to_owned()))?;
    // glibc applies each of these to every thread of the process, not only the caller.
    // SAFETY: initgroups reads the NUL-terminated name; setgid and setuid take plain IDs.
    unsafe {
        if libc::initgroups(c_user.as_ptr(), ids.gid) != 0 {
            return Err(os("initgroups"));
        }
        if libc::setgid(ids.gid) != 0 {
            return Err(os("setgid"));
        }
        if libc::setuid(ids.uid) != 0 {
            return Err(os("setuid"));
        }
        // Paranoia that costs nothing: root must be gone for good.
        if ids.uid != 0 && libc::setuid(0) == 0 {
            return Err(PrivilegeError::Os {
                user: user.to_owned(),
                step: "dropping root for good",
                source: std::io::Error::other("setuid(0) still succeeds"),
            });
        }
    }
    Ok(ids)
}

/// The name of user `uid`, for logs; the number when it has none.
pub fn user_name(uid: u32) -> String {
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: as in `lookup`, with getpwuid_r.
    unsafe {
        let mut pwd: libc::passwd = std::mem::zeroed();
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr().cast(), buf.len(), &mut result);
        if rc == 0 && !result.is_null() && !pwd.pw_name.is_null() {
            return CStr::from_ptr(pwd.pw_name).to_string_lossy().into_owned();
        }
    }
    uid.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_missing_users_are_looked_up() {
        assert_eq!(lookup("root", None).expect("root").uid, 0);
        assert_eq!(lookup("root", Some("root")).expect("root").gid, 0);
        let e = lookup("no-such-user-here", None).expect_err("missing");
        assert_eq!(
            e.to_string(),
            "server.user: no user named \"no-such-user-here\" on this system"
        );
        let e = lookup("root", Some("no-such-group-here")).expect_err("missing");
        assert!(e.to_string().contains("no group named"), "{e}");
        assert_eq!(user_name(0), "root");
    }
}
