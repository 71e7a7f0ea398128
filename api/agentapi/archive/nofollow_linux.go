package archive

import "syscall"

const syscallNoFollow = syscall.O_NOFOLLOW
