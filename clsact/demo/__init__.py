"""``clsact demo`` (:mod:`clsact.demo.run`) and its props: the digits data and baseline
(:mod:`clsact.demo.digits`) and the S3 server on loopback (:mod:`clsact.demo.s3server`)."""
