/* Small file-system helpers the commands share. */
#ifndef IOTFIN_CORE_FILES_H
#define IOTFIN_CORE_FILES_H

/* Creates path and its missing parents, each with mode 0700 (what iotfin keeps is
 * private). 0, or -1 with errno. */
int files_mkdir_p(const char *path);

#endif
