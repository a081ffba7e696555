"""FGGM: formal grey-box attack on DRL MU-MIMO schedulers."""
