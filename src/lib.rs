//! ringcast
