//! RLIMIT_NOFILE is raised to the hard limit at start (its own test binary, since it
//! changes the process's limits).

use nix::sys::resource::{getrlimit, setrlimit, Resource};

#[test]
fn open_file_limit_is_raised_to_the_hard_limit() {
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    let low = hard.min(256);
    setrlimit(Resource::RLIMIT_NOFILE, low, hard).unwrap();
    assert_eq!(getrlimit(Resource::RLIMIT_NOFILE).unwrap().0, low);
    let raised = honeytrap::privileges::raise_nofile();
    assert_eq!(raised, hard);
    assert_eq!(getrlimit(Resource::RLIMIT_NOFILE).unwrap(), (hard, hard));
}
